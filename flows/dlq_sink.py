"""Dead letters to Kafka `events.dlq`, each one confirmed by the broker.

Bytewax's own KafkaSink flushes without looking at delivery reports, so a
failed dead letter would vanish; this sink retries until every one is
acknowledged.
"""

from __future__ import annotations

import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.messages import DeadLetter
from meterflow.retry import retry_forever
from meterflow.clients import kafka_producer
from meterflow.kafka import OutgoingMessage, produce_confirmed
from meterflow.settings import Settings

log = structlog.get_logger(__name__)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = kafka_producer(settings)

    def _send(self, pending: list[OutgoingMessage]) -> None:
        outcomes = produce_confirmed(
            self._producer, pending, timeout_s=self._settings.kafka_produce_timeout_s
        )
        failed = [(msg, err) for msg, err in zip(pending, outcomes) if err is not None]
        if failed:
            pending[:] = [msg for msg, _ in failed]
            # A fresh producer, as the API does (see api.deps.Clients.replace_producer).
            self._producer = kafka_producer(self._settings)
            raise RuntimeError(f"{len(failed)} dead letters not acknowledged: {failed[0][1]}")

    def write_batch(self, items: list[DeadLetter]) -> None:
        if not items:
            return
        pending = [
            OutgoingMessage(topic=self._settings.topic_dlq, value=item.to_json(), key=item.key)
            for item in items
        ]
        retry_forever(
            lambda: self._send(pending),
            what="dlq_produce",
            max_backoff_s=self._settings.sink_retry_max_backoff_s,
        )
        for item in items:
            log.warning(
                "dead_letter",
                reason=item.reason,
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
            )

    def close(self) -> None:
        self._producer.flush(self._settings.kafka_produce_timeout_s)


class DeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self._settings)
