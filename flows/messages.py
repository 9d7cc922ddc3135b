"""The items that travel between the dataflow's steps.

Valid events travel a batch at a time (`EventBatch`, one item per poll of
a Kafka partition): every item crossing a Bytewax step costs microseconds
in Bytewax's own loop, so one item per event cost more than the work done
on the event.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from operators.dedup import INGEST_ID_HEADER
from operators.events import UsageEvent


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid events, in Kafka order, and the id of each one's copy
    (`ingest_ids[i]` belongs to `events[i]`, see operators.dedup)."""

    events: list[UsageEvent]
    ingest_ids: list[str]

    def __len__(self) -> int:
        return len(self.events)

    def keep(self, kept: list[bool]) -> EventBatch:
        """The events whose `kept` flag is true, in order."""
        pairs = [(e, i) for e, i, k in zip(self.events, self.ingest_ids, kept) if k]
        return EventBatch([e for e, _ in pairs], [i for _, i in pairs])

    def backup_lines(self) -> list[tuple[int, bytes]]:
        """(timestamp, NDJSON line of the S3 backup) per event. A line keeps
        the ingest id, so a replay from the backup is recognised by dedup as
        the same copy."""
        return [
            (event.timestamp, orjson.dumps({**event.to_dict(), "ingest_id": ingest_id}))
            for event, ingest_id in zip(self.events, self.ingest_ids)
        ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A Kafka message that is not a valid event, with why and where it was."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def to_json(self) -> bytes:
        record: dict[str, Any] = {
            "reason": self.reason,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "failed_at": int(time.time() * 1000),
        }
        if self.value is not None:
            try:
                record["value"] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                record["value_base64"] = base64.b64encode(self.value).decode()
        return orjson.dumps(record)


def ingest_id_of(msg: Message) -> str:
    """The API's ingest id header, else the message's own position."""
    for name, value in msg.headers() or ():
        if name == INGEST_ID_HEADER and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return f"{msg.topic()}:{msg.partition()}:{msg.offset()}"


def produced_at_ms(msg: Message) -> int:
    """When the message entered Kafka; the reference "now" for validation."""
    kind, value = msg.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or value <= 0:
        return int(time.time() * 1000)
    return value
