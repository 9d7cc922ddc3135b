"""The events source: each poll of a Kafka partition is one dataflow item.

Bytewax's own KafkaSource emits one item per message, each wrapped in a
`KafkaSourceMessage` dataclass built in Python; at the dataflow's rates
that wrapping and the items crossing Bytewax's steps one by one cost more
than decoding the messages. This source emits the list of
`confluent_kafka.Message` one `consume()` returned, as one item, and the
decode step turns it into one `EventBatch`.

Recovery is Bytewax's KafkaSource's, on purpose: the same partition names
(`"<index>-<topic>"`) and the same state (the next offset to read), so a
dataflow that ran with KafkaSource resumes from its snapshots with this one.
"""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows import metrics
from meterflow.clients import kafka_admin
from meterflow.settings import Settings

# Seconds one poll waits for messages: short, because Bytewax polls the
# other partitions (and runs the other steps) in between.
POLL_TIMEOUT_S = 0.001


def consumer_config(settings: Settings) -> dict[str, str | int]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        # Offsets live in Bytewax recovery snapshots, not in a consumer group.
        "group.id": "BYTEWAX_IGNORED",
        "enable.auto.commit": "false",
        "enable.partition.eof": "false",
        # After a broker loses its log (in-memory Tansu restarted),
        # re-read from the start rather than skip to the end.
        "auto.offset.reset": "earliest",
        # The broker answers a fetch as soon as it has one byte, or empty at
        # the wait. Tansu on S3 answers empty whenever reading its log takes
        # longer than the wait, and then again on every retry: with 50 ms the
        # flow stopped for good at a slow part of the log (docs/reliability.md).
        # librdkafka fetches in its own thread, so a long wait never blocks
        # the poll below (POLL_TIMEOUT_S); an idle flow pays it in freshness.
        "fetch.min.bytes": "1",
        "fetch.wait.max.ms": str(settings.flow_fetch_wait_ms),
        # A fetch request may take the wait plus the broker's slowest read;
        # only a dead connection should hit this.
        "socket.timeout.ms": str(max(60_000, settings.flow_fetch_wait_ms + 30_000)),
        # Notice a recreated topic (a restarted in-memory broker) quickly.
        "topic.metadata.refresh.interval.ms": "2000",
    }


class _PartitionPoller(StatefulSourcePartition[list[Message], int]):
    def __init__(self, settings: Settings, topic: str, partition: int, next_offset: int) -> None:
        self._topic = topic
        self._partition = partition
        self._next_offset = next_offset
        self._batch_size = settings.flow_batch_size
        self._consumer = Consumer(consumer_config(settings))
        self._consumer.assign([TopicPartition(topic, partition, next_offset)])
        # Watched from now on, read or not: a partition stuck at its first
        # offset still has its lag measured and its stall reported.
        metrics.PROGRESS.assigned(topic, partition, next_offset)

    def next_batch(self) -> list[list[Message]]:
        messages = self._consumer.consume(self._batch_size, POLL_TIMEOUT_S)
        if not messages:
            return []
        # Consumer errors (broker unreachable, ...) come as messages without
        # a position; only real messages move the offset.
        for msg in reversed(messages):
            if msg.error() is None:
                self._next_offset = msg.offset() + 1
                metrics.PROGRESS.read(self._topic, self._partition, self._next_offset)
                break
        return [messages]

    def snapshot(self) -> int:
        return self._next_offset

    def close(self) -> None:
        metrics.PROGRESS.unassigned(self._topic, self._partition)
        self._consumer.close()


class EventsSource(FixedPartitionedSource[list[Message], int]):
    """Every partition of `settings.topic_events`, from the start or from
    the recovered offsets."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def list_parts(self) -> list[str]:
        topic = self._settings.topic_events
        metadata = kafka_admin(self._settings).list_topics(topic).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"cannot list the partitions of {topic!r}: {metadata.error.str()}")
        return [f"{index}-{topic}" for index in metadata.partitions]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PartitionPoller:
        index, topic = for_part.split("-", 1)
        next_offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _PartitionPoller(self._settings, topic, int(index), next_offset)
