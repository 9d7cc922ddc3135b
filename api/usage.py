"""Usage of a metric over a period, computed by ClickHouse.

Every value reaches ClickHouse as a bound parameter; the only text spliced
into SQL is the aggregate expression, chosen from a fixed table by the
catalog's aggregation, and the database name from configuration. Reads use
FINAL so replayed rows that are not merged yet are never counted twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client as ClickHouseClient
from clickhouse_connect.driver.exceptions import ClickHouseError

from api.errors import ServiceUnavailable
from operators.metrics import Aggregation, Metric

PROPERTY_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
MISSING_GROUP = "(none)"

_NUMBER = "toFloat64OrZero(properties[{prop:String}])"
AGGREGATES: dict[Aggregation, str] = {
    Aggregation.COUNT: "count()",
    Aggregation.SUM: f"sum({_NUMBER})",
    Aggregation.MAX: f"max({_NUMBER})",
    Aggregation.AVG: f"avg({_NUMBER})",
    Aggregation.UNIQUE_COUNT: "uniqExact(properties[{prop:String}])",
    Aggregation.LATEST: f"argMax({_NUMBER}, timestamp)",
}


@dataclass(frozen=True, slots=True)
class Usage:
    value: Decimal
    breakdown: dict[str, Decimal] | None = None


def to_decimal(value: Any) -> Decimal:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Decimal(0)
    return Decimal(str(value))


def run_query(client: ClickHouseClient, sql: str, parameters: dict[str, Any]) -> list[tuple]:
    """Rows of a parameterised query; a ClickHouse that cannot answer is a 503
    (usage, alerts and detection all read through here)."""
    try:
        return client.query(sql, parameters=parameters).result_rows
    except ClickHouseError as exc:
        raise ServiceUnavailable(f"usage store unavailable: {exc}") from exc
    except OSError as exc:
        raise ServiceUnavailable(f"usage store unavailable: {exc}") from exc


def query_usage(
    client: ClickHouseClient,
    database: str,
    metric: Metric,
    customer_id: str,
    start_ms: int,
    end_ms: int,
    group_by: str | None = None,
) -> Usage:
    """`metric` for `customer_id` over [start_ms, end_ms]; with `group_by`, also
    per value of that property (events without it under "(none)")."""
    if group_by is not None and not PROPERTY_NAME.fullmatch(group_by):
        raise ValueError("group_by must be a property name (letters, digits, '_', '.', ':', '-')")
    where = [
        "customer_id = {customer:String}",
        "event_type = {event_type:String}",
        "timestamp >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')",
        "timestamp <= fromUnixTimestamp64Milli({end:Int64}, 'UTC')",
    ]
    if metric.aggregation.needs_property:
        where.append("mapContains(properties, {prop:String})")
    parameters: dict[str, Any] = {
        "customer": customer_id,
        "event_type": metric.event_type,
        "start": start_ms,
        "end": end_ms,
        "prop": metric.property or "",
        "group": group_by or "",
    }
    aggregate = AGGREGATES[metric.aggregation]
    table = f"`{database}`.events FINAL"
    condition = " AND ".join(where)
    total = run_query(client, f"SELECT {aggregate} FROM {table} WHERE {condition}", parameters)  # sql-ok
    value = to_decimal(total[0][0]) if total else Decimal(0)
    if group_by is None:
        return Usage(value)
    rows = run_query(
        client,
        f"SELECT properties[{{group:String}}] AS g, {aggregate} FROM {table} "  # sql-ok
        f"WHERE {condition} GROUP BY g ORDER BY g",
        parameters,
    )
    return Usage(value, {(g if g != "" else MISSING_GROUP): to_decimal(v) for g, v in rows})
