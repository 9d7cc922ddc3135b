"""Dead letters to Kafka `events.dlq`, each one confirmed by the broker.

Bytewax's own KafkaSink flushes without looking at delivery reports, so a
failed dead letter would vanish; this sink retries until every one is
acknowledged (meterflow.kafka.ConfirmedPublisher).
"""

from __future__ import annotations

import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.messages import DeadLetter
from meterflow.retry import retry_forever
from meterflow.kafka import ConfirmedPublisher, OutgoingMessage
from meterflow.settings import Settings

log = structlog.get_logger(__name__)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._publisher = ConfirmedPublisher(settings)

    def write_batch(self, items: list[DeadLetter]) -> None:
        if not items:
            return
        pending = [
            OutgoingMessage(topic=self._settings.topic_dlq, value=item.to_json(), key=item.key)
            for item in items
        ]
        with metrics.SINK_WRITE_SECONDS.labels(sink="dlq").time():
            retry_forever(
                lambda: self._publisher.send(pending),
                what="dlq_produce",
                max_backoff_s=self._settings.sink_retry_max_backoff_s,
            )
        metrics.DEAD_LETTERS.inc(len(items))
        for item in items:
            log.warning(
                "dead_letter",
                reason=item.reason,
                topic=item.topic,
                partition=item.partition,
                offset=item.offset,
            )

    def close(self) -> None:
        self._publisher.close()


class DeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self._settings)
