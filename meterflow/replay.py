"""Replay events from the S3 backup through the dataflow::

    meterflow replay --from 2026-11-01 [--to 2026-11-20] [--customer acme]

Reads the NDJSON backup objects of each UTC day in the range
(`events/YYYY/MM/DD/`) and produces every event to `events.raw` again,
with the ingest id it was backed up with. Dedup recognises each as a
replay of the copy that was counted (operators.dedup), ClickHouse collapses
it onto the stored row, so totals do not change; an event missing from
ClickHouse (a lost table, a restore) is stored again. Each message's Kafka
timestamp is the event's own time, so the dataflow validates it as of when
it happened: the 30-day age rule was applied when it was first accepted,
and a backfill of an older day must not fail it again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterator

import orjson
import structlog
from minio import Minio
from tqdm import tqdm

from meterflow.clients import s3_client
from meterflow.kafka import ConfirmedPublisher, OutgoingMessage
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from operators.dedup import INGEST_ID_HEADER

log = structlog.get_logger(__name__)

CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    days: int
    objects: int
    events: int


def days_between(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError("the range ends before it starts")
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def backup_objects(s3: Minio, bucket: str, day: date) -> list[str]:
    prefix = f"events/{day:%Y/%m/%d}/"
    return sorted(obj.object_name for obj in s3.list_objects(bucket, prefix=prefix, recursive=True))


def backup_events(s3: Minio, bucket: str, name: str) -> Iterator[dict]:
    response = s3.get_object(bucket, name)
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    for line in body.splitlines():
        if line:
            yield orjson.loads(line)


def to_message(settings: Settings, line: dict) -> OutgoingMessage:
    ingest_id = line.pop("ingest_id")
    return OutgoingMessage(
        topic=settings.topic_events,
        value=orjson.dumps(line),
        key=line["customer_id"].encode(),
        headers=[(INGEST_ID_HEADER, ingest_id.encode())],
        timestamp_ms=int(line["timestamp"]),
    )


def replay(settings: Settings, first: date, last: date, customer_id: str | None = None) -> ReplayResult:
    """Produce the backed-up events of [first, last] (UTC days) to events.raw again."""
    s3 = s3_client(settings)
    publisher = ConfirmedPublisher(settings)
    days = days_between(first, last)
    objects = events = 0
    pending: list[OutgoingMessage] = []

    def flush() -> None:
        retry_forever(lambda: publisher.send(pending), what="replay_produce",
                      max_backoff_s=settings.sink_retry_max_backoff_s)  # fmt: skip
        pending.clear()

    with tqdm(desc="replayed", unit="ev", unit_scale=True, file=sys.stderr) as bar:
        for day in days:
            for name in backup_objects(s3, settings.s3_bucket, day):
                objects += 1
                for line in backup_events(s3, settings.s3_bucket, name):
                    if customer_id is not None and line.get("customer_id") != customer_id:
                        continue
                    pending.append(to_message(settings, line))
                    events += 1
                    bar.update()
                    if len(pending) >= CHUNK:
                        flush()
        flush()
    publisher.close()
    log.info("replayed", first=str(first), last=str(last), objects=objects, events=events)
    return ReplayResult(len(days), objects, events)
