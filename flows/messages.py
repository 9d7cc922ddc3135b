"""The items that travel between the dataflow's steps."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from operators.dedup import INGEST_ID_HEADER
from operators.events import UsageEvent


@dataclass(frozen=True, slots=True)
class IngestedEvent:
    """A valid event and the id of this copy of it (see operators.dedup)."""

    event: UsageEvent
    ingest_id: str

    def to_backup_json(self) -> bytes:
        """One NDJSON line of the S3 backup; keeps the ingest id so a replay
        from the backup is recognised by dedup as the same copy."""
        return orjson.dumps({**self.event.to_dict(), "ingest_id": self.ingest_id})


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


def ingest_id_of(msg: KafkaSourceMessage) -> str:
    """The API's ingest id header, else the message's own position."""
    for name, value in msg.headers:
        if name == INGEST_ID_HEADER and value:
            return value.decode() if isinstance(value, bytes) else str(value)
    return f"{msg.topic}:{msg.partition}:{msg.offset}"


def produced_at_ms(msg: KafkaSourceMessage) -> int:
    """When the message entered Kafka; the reference "now" for validation."""
    kind, value = msg.timestamp
    if kind == TIMESTAMP_NOT_AVAILABLE or value <= 0:
        return int(time.time() * 1000)
    return value
