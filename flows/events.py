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
from bytewax.dataflow import Dataflow
from confluent_kafka import Message

from flows import metrics
from flows.alert_sink import AlertSink
from flows.clickhouse_sink import ClickHouseEventSink
from flows.detectors import Observation, UsageDetector, combine_of, hourly_observations
from flows.dlq_sink import DeadLetterSink
from flows.kafka_source import EventsSource
from flows.messages import DeadLetter, EventBatch, ingest_id_of, produced_at_ms
from flows.s3_sink import S3BackupSink
from meterflow.clients import redis_client
from meterflow.log import configure_logging
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from meterflow.storage import ensure_all
from operators import dedup
from operators.alerts import Alert
from operators.baselines import load_baselines
from operators.events import InvalidEvent, UsageEvent, decode_event

log = structlog.get_logger(__name__)


def decode_batch(messages: list[Message]) -> list[EventBatch | DeadLetter]:
    """One poll's messages as one EventBatch of the valid events (left out
    when there are none) and a DeadLetter per invalid one; consumer errors
    are logged."""
    events: list[UsageEvent] = []
    ingest_ids: list[str] = []
    dead: list[DeadLetter] = []
    for msg in messages:
        if msg.error() is not None:
            # A consumer-side error (broker unreachable, ...), not a message:
            # librdkafka keeps retrying and the offset does not move.
            log.warning("kafka_consumer_error", error=str(msg.error()))
            metrics.CONSUMER_ERRORS.inc()
            continue
        value = msg.value()
        try:
            events.append(decode_event(value, now_ms=produced_at_ms(msg)))
        except InvalidEvent as exc:
            dead.append(
                DeadLetter(
                    reason=str(exc),
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=msg.key(),
                    value=value,
                )
            )
            continue
        ingest_ids.append(ingest_id_of(msg))
    metrics.count_decoded(len(events), len(dead))
    out: list[EventBatch | DeadLetter] = [EventBatch(events, ingest_ids)] if events else []
    return out + dead


def is_event_batch(item: EventBatch | DeadLetter) -> bool:
    return isinstance(item, EventBatch)


class Deduplicator:
    """Keeps the first copy of each transaction_id (and replays of that copy)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis = redis_client(settings)

    def __call__(self, batch: EventBatch) -> EventBatch:
        claims = [(e.customer_id, e.transaction_id, i) for e, i in zip(batch.events, batch.ingest_ids)]
        with metrics.DEDUP_SECONDS.time():
            verdicts = retry_forever(
                lambda: dedup.claim_many(self._redis, claims, self._settings.dedup_ttl_s),
                what="redis_dedup",
                max_backoff_s=self._settings.sink_retry_max_backoff_s,
            )
        counts = [verdict.counts for verdict in verdicts]
        if all(counts):
            return batch
        kept = batch.keep(counts)
        log.info("duplicates_dropped", count=len(batch) - len(kept))
        metrics.DUPLICATES_DROPPED.inc(len(batch) - len(kept))
        return kept


def keyed_observations(batch: EventBatch) -> list[tuple[str, Observation]]:
    return [(obs.key, obs) for obs in hourly_observations(batch.events)]


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


def build_flow(settings: Settings | None = None) -> Dataflow:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    # Wait for the services rather than crash-loop while they start.
    retry_forever(lambda: ensure_all(settings), what="prepare_storage")
    metrics.serve(settings)

    flow = Dataflow("meterflow_events")
    raw = op.input("kafka_in", flow, EventsSource(settings))
    # list[confluent_kafka.Message]: one poll of one partition
    decoded = op.flat_map("decode", raw, decode_batch)
    # EventBatch (the poll's valid events) | DeadLetter
    split = op.branch("split_valid", decoded, is_event_batch)
    op.output("dlq_out", split.falses, DeadLetterSink(settings))
    # DeadLetter -> events.dlq
    unique = op.map("dedup", split.trues, Deduplicator(settings))
    # EventBatch: first copy of each transaction_id, or a replay of it
    op.output("clickhouse_out", unique, ClickHouseEventSink(settings))
    op.output("s3_out", unique, S3BackupSink(settings))
    observations = op.flat_map("observe", unique, keyed_observations)
    # ("customer/metric", Observation): a batch's events folded per hour
    alerts = op.stateful_flat_map("detect", observations, Detect(settings))
    # ("customer/metric", Alert)
    op.output("alerts_out", alerts, AlertSink(settings))
    log.info("dataflow_built", topic=settings.topic_events, brokers=settings.kafka_bootstrap_servers)
    return flow
