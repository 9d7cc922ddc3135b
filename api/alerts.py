"""Reading the alerts the streaming detectors stored in ClickHouse.

FINAL collapses an alert re-detected after a restart (same alert id) to
one row; every value is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client as ClickHouseClient

from api.usage import run_query


@dataclass(frozen=True, slots=True)
class AlertFilter:
    customer_id: str
    since_ms: int
    kind: str | None = None
    limit: int = 100


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def list_alerts(client: ClickHouseClient, database: str, wanted: AlertFilter) -> list[dict[str, Any]]:
    """Alerts of one customer created at or after `since_ms`, newest first."""
    table = f"`{database}`.alerts FINAL"  # sql-ok: the database name comes from configuration
    sql = (
        "SELECT alert_id, customer_id, metric, kind, severity, score, "
        "window_start, window_end, evidence, created_at, event_time FROM " + table + " "
        "WHERE customer_id = {customer:String} "
        "AND created_at >= fromUnixTimestamp64Milli({since:Int64}) "
        "AND ({kind:String} = '' OR kind = {kind:String}) "
        "ORDER BY created_at DESC, alert_id LIMIT {limit:UInt32}"
    )
    parameters = {
        "customer": wanted.customer_id,
        "since": wanted.since_ms,
        "kind": wanted.kind or "",
        "limit": wanted.limit,
    }
    rows = run_query(client, sql, parameters)
    return [
        {
            "alert_id": alert_id,
            "customer_id": customer_id,
            "metric": metric,
            "kind": kind,
            "severity": severity,
            "score": score,
            "window": {"start": _ms(window_start), "end": _ms(window_end)},
            "evidence": orjson.loads(evidence),
            "created_at": _ms(created_at),
            "event_time": _ms(event_time),
        }
        for (alert_id, customer_id, metric, kind, severity, score,
             window_start, window_end, evidence, created_at, event_time) in rows
    ]  # fmt: skip
