"""Batched, retried inserts of events into ClickHouse `events`."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from flows.messages import IngestedEvent
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


def event_columns(items: list[IngestedEvent]) -> list[list[Any]]:
    """Column-oriented data in EVENTS_COLUMNS order."""
    events = [item.event for item in items]
    return [
        [e.transaction_id for e in events],
        [e.customer_id for e in events],
        [e.event_type for e in events],
        [e.timestamp for e in events],
        [{k: property_text(v) for k, v in e.properties.items()} for e in events],
    ]


class _ClickHousePartition(StatelessSinkPartition[IngestedEvent]):
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

    def write_batch(self, items: list[IngestedEvent]) -> None:
        if not items:
            return
        columns = event_columns(items)
        with metrics.SINK_WRITE_SECONDS.labels(sink="clickhouse").time():
            retry_forever(
                lambda: self._insert(columns),
                what="clickhouse_insert",
                max_backoff_s=self._settings.sink_retry_max_backoff_s,
            )
        metrics.CLICKHOUSE_ROWS.inc(len(items))
        log.debug("clickhouse_inserted", rows=len(items))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class ClickHouseEventSink(DynamicSink[IngestedEvent]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ClickHousePartition:
        return _ClickHousePartition(self._settings)
