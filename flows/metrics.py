"""Prometheus metrics of the dataflow, served over HTTP by each dataflow process.

prometheus_client keeps one registry per process by design, and Bytewax's
workers are threads of one process, so the metric objects live here at
module level (the dataflow's one piece of global mutable state): every
worker adds to the same counters and one endpoint shows the process's
totals. A dataflow of several processes (`-i`/`-a`) has one endpoint per
process; `flows.run` gives process N the port FLOW_METRICS_PORT + N.

Consumer lag is computed when Prometheus scrapes, not on the hot path:
`decode_batch` only records the next offset it will read per partition,
and the collector asks the broker for the high watermarks then.
"""

from __future__ import annotations

import time
from typing import Iterator

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from meterflow.settings import Settings
from operators.alerts import ALERT_KINDS

log = structlog.get_logger(__name__)

# Seconds; sinks block and retry through outages, hence the long tail.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SINKS = ("clickhouse", "s3", "dlq", "alerts")
# One scrape waits at most this long for the broker's watermarks, so a
# broker outage leaves the lag unreported instead of hanging the scrape.
WATERMARK_TIMEOUT_S = 2.0

MESSAGES_IN = Counter("meterflow_flow_messages_in", "Messages read from events.raw, valid or not")
CONSUMER_ERRORS = Counter(
    "meterflow_flow_consumer_errors", "Errors the Kafka consumer reported instead of a message"
)
EVENTS_VALID = Counter("meterflow_flow_events_valid", "Messages that decoded into a valid event")
DEAD_LETTERS = Counter(
    "meterflow_flow_dead_letters", "Invalid messages written to the dead-letter topic (acknowledged)"
)
DUPLICATES_DROPPED = Counter(
    "meterflow_flow_duplicates_dropped", "Events dropped by dedup because another copy counts"
)
CLICKHOUSE_ROWS = Counter("meterflow_flow_clickhouse_rows", "Event rows inserted into ClickHouse")
S3_OBJECTS = Counter("meterflow_flow_s3_objects", "NDJSON backup objects written to S3")
ALERTS = Counter(
    "meterflow_flow_alerts", "Alerts emitted (ClickHouse alerts table and alerts topic), by kind", ["kind"]
)
SINK_WRITE_SECONDS = Histogram(
    "meterflow_flow_sink_write_seconds",
    "Time to write one batch to a sink, retries included",
    ["sink"],
    buckets=LATENCY_BUCKETS,
)
DEDUP_SECONDS = Histogram(
    "meterflow_flow_dedup_seconds",
    "Time to claim one batch's transaction_ids in Redis, retries included",
    buckets=LATENCY_BUCKETS,
)
# Every series from the start: a sink that never wrote shows 0, not nothing.
for _kind in ALERT_KINDS:
    ALERTS.labels(kind=_kind)
for _sink in SINKS:
    SINK_WRITE_SECONDS.labels(sink=_sink)

# (topic, partition) -> the next offset the dataflow will read there.
_next_offsets: dict[tuple[str, int], int] = {}


def record_read(topic: str, partition: int, offset: int) -> None:
    """Note that the message at `offset` was read (called by decode_batch
    with the last message of each poll)."""
    _next_offsets[(topic, partition)] = offset + 1


def read_positions() -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset to read; a copy, because workers
    add partitions while a scrape goes through them."""
    return dict(_next_offsets)


def lag(high_watermark: int, next_offset: int) -> int:
    """Messages not yet read. Never negative: Tansu's high watermark can
    trail the last offset (docs/operations.md), which reads as 0."""
    return max(0, high_watermark - next_offset)


def count_decoded(valid: int, dead: int) -> None:
    """Count one decoded batch (once per batch: a counter takes a lock)."""
    MESSAGES_IN.inc(valid + dead)
    EVENTS_VALID.inc(valid)


class ConsumerLag(Collector):
    """`meterflow_flow_consumer_lag{topic, partition}` (see `lag`), for each
    partition this process has read from since it started (partitions of
    other processes are theirs to report)."""

    def __init__(self, settings: Settings) -> None:
        # Only asks for watermarks: never subscribes, so never joins a group.
        self._consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "meterflow-lag-probe"}
        )

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meterflow_flow_consumer_lag",
            "Messages in the partition not yet read by the dataflow (high watermark - next offset)",
            labels=["topic", "partition"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe(), registering would call collect() and the broker.
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        deadline = time.monotonic() + WATERMARK_TIMEOUT_S
        for (topic, partition), next_offset in sorted(read_positions().items()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=left)
            except KafkaException as exc:
                log.warning("consumer_lag_unknown", topic=topic, partition=partition, error=str(exc))
                break
            family.add_metric([topic, str(partition)], lag(high, next_offset))
        yield family


def serve(settings: Settings) -> None:
    """Serve this process's metrics at http://FLOW_METRICS_HOST:FLOW_METRICS_PORT/metrics.

    A port already taken (another dataflow on this machine) costs the
    metrics, not the dataflow: metering goes on, with a warning.
    """
    if not settings.flow_metrics_port:
        return
    try:
        start_http_server(settings.flow_metrics_port, addr=settings.flow_metrics_host)
    except OSError as exc:
        log.warning("flow_metrics_not_served", port=settings.flow_metrics_port, error=str(exc))
        return
    REGISTRY.register(ConsumerLag(settings))
    log.info("flow_metrics_served", host=settings.flow_metrics_host, port=settings.flow_metrics_port)
