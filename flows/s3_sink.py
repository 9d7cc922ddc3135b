"""Backup of every stored event to S3 as NDJSON objects, one per day per batch.

Object keys: `events/YYYY/MM/DD/batch_<unix-ms>_<random>.ndjson`, the date
being the events' own (UTC), so a day can be replayed by listing a prefix.
"""

from __future__ import annotations

import io
import secrets
import time
from collections import defaultdict
from datetime import datetime, timezone

import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.messages import EventBatch
from meterflow.retry import retry_forever
from meterflow.clients import s3_client
from meterflow.settings import Settings

log = structlog.get_logger(__name__)


DAY_MS = 86_400_000


def day_prefix(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).strftime("%Y/%m/%d")


def backup_objects(batches: list[EventBatch], now_ms: int) -> dict[str, bytes]:
    """Group batches by event day into {object key: NDJSON body}."""
    lines: dict[int, list[bytes]] = defaultdict(list)
    for batch in batches:
        for timestamp, line in batch.backup_lines():
            lines[timestamp // DAY_MS].append(line)
    suffix = f"{now_ms}_{secrets.token_hex(4)}"
    return {
        f"events/{day_prefix(day * DAY_MS)}/batch_{suffix}.ndjson": b"\n".join(day_lines) + b"\n"
        for day, day_lines in lines.items()
    }


class _S3Partition(StatelessSinkPartition[EventBatch]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = s3_client(settings)

    def _put(self, key: str, body: bytes) -> None:
        self._client.put_object(
            self._settings.s3_bucket,
            key,
            io.BytesIO(body),
            length=len(body),
            content_type="application/x-ndjson",
        )

    def write_batch(self, items: list[EventBatch]) -> None:
        if not any(items):
            return
        with metrics.SINK_WRITE_SECONDS.labels(sink="s3").time():
            for key, body in backup_objects(items, int(time.time() * 1000)).items():
                # Same key on every try: a retry after a lost response overwrites
                # the same object instead of adding a second copy.
                retry_forever(
                    lambda: self._put(key, body),
                    what="s3_put",
                    max_backoff_s=self._settings.sink_retry_max_backoff_s,
                )
                metrics.S3_OBJECTS.inc()
                log.debug("s3_backup_written", key=key, bytes=len(body))


class S3BackupSink(DynamicSink[EventBatch]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _S3Partition:
        return _S3Partition(self._settings)
