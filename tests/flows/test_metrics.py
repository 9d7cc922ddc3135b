"""flows.metrics: the lag itself and what decode_batch counts (progress: test_progress.py)."""

from prometheus_client import REGISTRY

from flows import metrics
from flows.events import decode_batch
from tests.flows.test_steps import message, valid_json


def test_lag_is_what_lies_between_the_next_offset_and_the_high_watermark():
    assert metrics.lag(high_watermark=42, next_offset=42) == 0
    assert metrics.lag(high_watermark=45, next_offset=42) == 3
    # Tansu's high watermark can trail what was already read: 0, never negative.
    assert metrics.lag(high_watermark=40, next_offset=42) == 0


def counts() -> tuple[float, float]:
    return (
        REGISTRY.get_sample_value("meterflow_flow_messages_in_total"),
        REGISTRY.get_sample_value("meterflow_flow_events_valid_total"),
    )


def test_a_decoded_batch_counts_its_messages_and_valid_events():
    before = counts()
    decode_batch([message(valid_json("tx-b")), message(valid_json("tx-c")), message(b"")])
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 2)
