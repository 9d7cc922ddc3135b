"""The events dataflow: Kafka -> validate -> dedup -> ClickHouse + S3, and
the streaming detectors -> alerts.

Run it with recovery (see flows.run)::

    python -m flows.run

Guarantees: a message that is not a valid event goes to `events.dlq` with
its reason; a valid event is counted once (dedup in Redis, see
operators.dedup) and stored idempotently (ReplacingMergeTree, per-batch S3
objects). Every side effect retries until it succeeds, so an outage stalls
the flow instead of dropping data. Detector state and source offsets are
snapshotted by Bytewax recovery, so a restarted flow resumes both together.
"""

from __future__ import annotations

import time

import bytewax.operators as op
import structlog
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow

from flows import metrics
from flows.alert_sink import AlertSink
from flows.clickhouse_sink import ClickHouseEventSink
from flows.detectors import Observation, UsageDetector, combine_of, hourly_observations
from flows.dlq_sink import DeadLetterSink
from flows.messages import DeadLetter, IngestedEvent, ingest_id_of, produced_at_ms
from flows.s3_sink import S3BackupSink
from meterflow.clients import redis_client
from meterflow.log import configure_logging
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from meterflow.storage import ensure_all
from operators import dedup
from operators.alerts import Alert
from operators.baselines import load_baselines
from operators.events import InvalidEvent, decode_event

log = structlog.get_logger(__name__)

RawItem = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError


def decode_batch(batch: list[RawItem]) -> list[IngestedEvent | DeadLetter]:
    """Turn Kafka messages into events or dead letters; consumer errors are logged."""
    out: list[IngestedEvent | DeadLetter] = []
    for msg in batch:
        if isinstance(msg, KafkaError):
            # A consumer-side error (broker unreachable, ...), not a message:
            # librdkafka keeps retrying and the offset does not move.
            log.warning("kafka_consumer_error", error=str(msg.err))
            metrics.CONSUMER_ERRORS.inc()
            continue
        metrics.record_read(msg.topic, msg.partition, msg.offset)
        try:
            event = decode_event(msg.value, now_ms=produced_at_ms(msg))
        except InvalidEvent as exc:
            out.append(
                DeadLetter(
                    reason=str(exc),
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key,
                    value=msg.value,
                )
            )
            continue
        out.append(IngestedEvent(event=event, ingest_id=ingest_id_of(msg)))
    metrics.count_decoded(out)
    return out


def is_event(item: IngestedEvent | DeadLetter) -> bool:
    return isinstance(item, IngestedEvent)


class Deduplicator:
    """Keeps the first copy of each transaction_id (and replays of that copy)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis = redis_client(settings)

    def __call__(self, batch: list[IngestedEvent]) -> list[IngestedEvent]:
        pairs = [(item.event.customer_id, item.event.transaction_id, item.ingest_id) for item in batch]
        with metrics.DEDUP_SECONDS.time():
            claims = retry_forever(
                lambda: dedup.claim_many(self._redis, pairs, self._settings.dedup_ttl_s),
                what="redis_dedup",
                max_backoff_s=self._settings.sink_retry_max_backoff_s,
            )
        kept = [item for item, claim in zip(batch, claims) if claim.counts]
        if len(kept) < len(batch):
            log.info("duplicates_dropped", count=len(batch) - len(kept))
            metrics.DUPLICATES_DROPPED.inc(len(batch) - len(kept))
        return kept


def keyed_observations(batch: list[IngestedEvent]) -> list[tuple[str, Observation]]:
    return [(obs.key, obs) for obs in hourly_observations(item.event for item in batch)]


class Detect:
    """The `detect` step: one UsageDetector per (customer, metric).

    A detector seen for the first time starts from the weekday baselines
    stored by `POST /v1/fraud/baselines/build`, if any; after that its state
    (baselines learned online included) lives in Bytewax recovery.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis = redis_client(settings)

    def _new_detector(self, obs: Observation) -> UsageDetector:
        baselines = retry_forever(
            lambda: load_baselines(self._redis, obs.customer_id, obs.metric),
            what="redis_baselines",
            max_backoff_s=self._settings.sink_retry_max_backoff_s,
        )
        return UsageDetector(obs.customer_id, obs.metric, combine=combine_of(obs.metric), baselines=baselines)

    def __call__(self, detector: UsageDetector | None, obs: Observation) -> tuple[UsageDetector, list[Alert]]:
        if detector is None:
            detector = self._new_detector(obs)
        return detector, detector.observe(obs.timestamp, obs.value, int(time.time() * 1000), obs.events)


def events_source(settings: Settings) -> KafkaSource:
    return KafkaSource(
        brokers=settings.kafka_bootstrap_servers.split(","),
        topics=[settings.topic_events],
        batch_size=settings.flow_batch_size,
        # Consumer errors become items (logged in decode_batch) instead of
        # crashing the worker; the partition keeps its offset.
        raise_on_errors=False,
        add_config={
            # After a broker loses its log (in-memory Tansu restarted),
            # re-read from the start rather than skip to the end.
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": "50",
            # Notice a recreated topic (a restarted in-memory broker) quickly.
            "topic.metadata.refresh.interval.ms": "2000",
        },
    )


def build_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    # Wait for the services rather than crash-loop while they start.
    retry_forever(lambda: ensure_all(settings), what="prepare_storage")
    metrics.serve(settings)

    flow = Dataflow("meterflow_events")
    raw = op.input("kafka_in", flow, events_source(settings))
    # KafkaSourceMessage | KafkaError
    decoded = op.flat_map_batch("decode", raw, decode_batch)
    # IngestedEvent | DeadLetter
    split = op.branch("split_valid", decoded, is_event)
    op.output("dlq_out", split.falses, DeadLetterSink(settings))
    # DeadLetter -> events.dlq
    unique = op.flat_map_batch("dedup", split.trues, Deduplicator(settings))
    # IngestedEvent: first copy of each transaction_id, or a replay of it
    op.output("clickhouse_out", unique, ClickHouseEventSink(settings))
    op.output("s3_out", unique, S3BackupSink(settings))
    observations = op.flat_map_batch("observe", unique, keyed_observations)
    # ("customer/metric", Observation): a batch's events folded per hour
    alerts = op.stateful_flat_map("detect", observations, Detect(settings))
    # ("customer/metric", Alert)
    op.output("alerts_out", alerts, AlertSink(settings))
    log.info("dataflow_built", topic=settings.topic_events, brokers=settings.kafka_bootstrap_servers)
    return flow
