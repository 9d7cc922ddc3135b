"""flows.metrics: what decode_batch records for the consumer lag, and the lag itself."""

from prometheus_client import REGISTRY

from flows import metrics
from flows.events import decode_batch
from tests.flows.test_steps import message, valid_json


def test_the_next_offset_is_the_one_after_the_last_message_of_a_poll():
    decode_batch([message(valid_json("tx-a"), offset=40), message(b"{broken", offset=41)])
    assert metrics.read_positions()[("events.raw", 2)] == 42  # dead letters move it too


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
