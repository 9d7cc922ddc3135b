"""Usage of a metric over a period, computed by ClickHouse.

Every value reaches ClickHouse as a bound parameter; the only text spliced
into SQL is the aggregate expression, chosen from a fixed table by the
catalog's aggregation, and the database name from configuration. Reads use
FINAL so replayed rows that are not merged yet are never counted twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client as ClickHouseClient
from clickhouse_connect.driver.exceptions import ClickHouseError

from api.errors import ServiceUnavailable
from operators.metrics import QUANTITY_SCALE, Aggregation, Metric

PROPERTY_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
MISSING_GROUP = "(none)"

# Metered values are parsed as exact decimals of the quantity domain's scale
# and added up as Decimal(76, 9): no binary float between an event's property
# and an invoice line, and no sum of in-domain values can overflow. A value
# that is not a number (only events stored before validation held metered
# properties to the domain) is NULL, which every aggregate skips.
_NUMBER = f"toDecimal256OrNull(properties[{{prop:String}}], {QUANTITY_SCALE})"  # sql-ok
AGGREGATES: dict[Aggregation, str] = {
    Aggregation.COUNT: "count()",
    Aggregation.SUM: f"sum({_NUMBER})",
    Aggregation.MAX: f"max({_NUMBER})",
    # avg() of decimals answers a Float64: the mean is the exact sum over the
    # count instead, cut toward zero to the quantity scale.
    Aggregation.AVG: f"sum({_NUMBER}) / nullIf(count({_NUMBER}), 0)",
    Aggregation.UNIQUE_COUNT: "uniqExact(properties[{prop:String}])",
    Aggregation.LATEST: f"argMax({_NUMBER}, timestamp)",
}


@dataclass(frozen=True, slots=True)
class Usage:
    value: Decimal
    breakdown: dict[str, Decimal] | None = None


def to_decimal(value: Decimal | int | None) -> Decimal:
    """An aggregate as ClickHouse returns it: Decimal, an integer count, or
    NULL when no event had a value."""
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(value)


def run_query(client: ClickHouseClient, sql: str, parameters: dict[str, Any]) -> list[tuple]:
    """Rows of a parameterised query; a ClickHouse that cannot answer is a 503
    (usage, alerts and detection all read through here)."""
    try:
        return client.query(sql, parameters=parameters).result_rows
    except ClickHouseError as exc:
        raise ServiceUnavailable(f"usage store unavailable: {exc}") from exc
    except OSError as exc:
        raise ServiceUnavailable(f"usage store unavailable: {exc}") from exc


def metric_condition(metric: Metric, end_inclusive: bool) -> str:
    """The WHERE condition selecting one customer's events of `metric` from
    {start} to {end} (Unix ms, bound by `metric_parameters`); fixed text only."""
    condition = (
        "customer_id = {customer:String} AND event_type = {event_type:String} "
        "AND timestamp >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
        f"AND timestamp {'<=' if end_inclusive else '<'} fromUnixTimestamp64Milli({{end:Int64}}, 'UTC')"  # sql-ok
    )
    if metric.aggregation.needs_property:
        condition += " AND mapContains(properties, {prop:String})"
    return condition


def metric_parameters(metric: Metric, customer_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
    return {
        "customer": customer_id,
        "event_type": metric.event_type,
        "start": start_ms,
        "end": end_ms,
        "prop": metric.property or "",
    }


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
    parameters = {**metric_parameters(metric, customer_id, start_ms, end_ms), "group": group_by or ""}
    aggregate = AGGREGATES[metric.aggregation]
    source = f"FROM `{database}`.events FINAL WHERE {metric_condition(metric, end_inclusive=True)}"  # sql-ok
    total = run_query(client, f"SELECT {aggregate} {source}", parameters)  # sql-ok
    value = to_decimal(total[0][0]) if total else Decimal(0)
    if group_by is None:
        return Usage(value)
    grouped = f"SELECT properties[{{group:String}}] AS g, {aggregate} {source} GROUP BY g ORDER BY g"  # sql-ok
    rows = run_query(client, grouped, parameters)
    return Usage(value, {(g if g != "" else MISSING_GROUP): to_decimal(v) for g, v in rows})
