"""Batched, retried inserts of events into ClickHouse `events`."""

from __future__ import annotations

from typing import Any, Sequence

import orjson
import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.messages import EventBatch
from meterflow.retry import retry_forever
from meterflow.clients import clickhouse_client
from meterflow.settings import Settings
from meterflow.storage import EVENTS_COLUMNS

log = structlog.get_logger(__name__)


def property_text(value: Any) -> str:
    """Properties are stored as Map(String, String): JSON text of each value
    (strings unquoted), so numbers keep their exact form for SUM/MAX."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def event_columns(batches: list[EventBatch]) -> list[Sequence[Any]]:
    """Column-oriented data in EVENTS_COLUMNS order, all batches in one insert.

    A UsageEvent is a tuple in EVENTS_COLUMNS order, so the columns are one
    `zip`; only the properties need their text form.
    """
    events = [event for batch in batches for event in batch.events]
    tids, customers, types, timestamps, properties = zip(*events)
    texts = [{k: property_text(v) for k, v in props.items()} for props in properties]
    return [tids, customers, types, timestamps, texts]


class _ClickHousePartition(StatelessSinkPartition[EventBatch]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._table = f"{settings.clickhouse_database}.events"
        self._client = None

    def _insert(self, columns: list[list[Any]]) -> None:
        if self._client is None:
            self._client = clickhouse_client(self._settings)
        try:
            self._client.insert(
                self._table, columns, column_names=EVENTS_COLUMNS, column_oriented=True
            )
        except Exception:
            self._client = None  # reconnect on the next try
            raise

    def write_batch(self, items: list[EventBatch]) -> None:
        rows = sum(len(batch) for batch in items)
        if not rows:
            return
        columns = event_columns(items)
        with metrics.SINK_WRITE_SECONDS.labels(sink="clickhouse").time():
            retry_forever(
                lambda: self._insert(columns),
                what="clickhouse_insert",
                max_backoff_s=self._settings.sink_retry_max_backoff_s,
            )
        metrics.CLICKHOUSE_ROWS.inc(rows)
        log.debug("clickhouse_inserted", rows=rows)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class ClickHouseEventSink(DynamicSink[EventBatch]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ClickHousePartition:
        return _ClickHousePartition(self._settings)
