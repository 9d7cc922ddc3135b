"""What the fraud dashboard draws: GET /v1/dashboard/data.

One answer per (customer, metric): the daily totals of the last `days` UTC
days with the days worth a look marked, today's hourly usage so far next to
what the baseline expects by the hour, and today's pattern check.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import ClientsDep
from api.detection import (
    DAY_MS,
    DEFAULT_BASELINE_DAYS,
    DEFAULT_THRESHOLD,
    HOURS,
    DayCheck,
    baseline_samples,
    bucket_values,
    check_date,
    check_volume,
    day_start_ms,
    day_vectors,
    history_dates,
    now_ms,
    stored_baselines,
    utc_day,
)
from api.routers.fraud import Days, FraudCheckResponse, OmitNone, SubjectDep, fraud_check_out

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])

AnomalyType = Literal["volume", "pattern", "both"]
PATTERN_CHANGES = ("pattern_shift", "pattern_and_volume")
ANOMALY_TYPES: dict[tuple[bool, bool], AnomalyType] = {  # (volume, pattern) -> anomaly_type
    (True, True): "both",
    (True, False): "volume",
    (False, True): "pattern",
}


class HistoryDay(OmitNone):
    date: str
    total: float
    is_anomaly: bool
    anomaly_type: AnomalyType | None = None


class DashboardResponse(BaseModel):
    customer_id: str
    metric: str
    usage_history: list[HistoryDay]
    current_pattern: list[float]  # today's hourly values so far (UTC), in the metric's unit
    baseline_pattern: list[float]  # what today's weekday baseline expects per hour
    latest_check: FraudCheckResponse


def history_day(check: DayCheck, total: float | None, before: list[float | None], today: date) -> HistoryDay:
    """A day of the chart, marked when its total is a critical Z-score against
    the `DEFAULT_BASELINE_DAYS` days before it (as GET /v1/anomalies/check
    with its defaults) or its hours moved away from the weekday baseline."""
    volume = check_volume(total or 0.0, baseline_samples(before), DEFAULT_THRESHOLD)
    # Today's total only grows: a total still below usual is no anomaly yet.
    volume_anomaly = volume.is_anomaly and (check.day < today or volume.z_score > 0)
    pattern_anomaly = check.verdict.kind in PATTERN_CHANGES
    kind = ANOMALY_TYPES.get((volume_anomaly, pattern_anomaly))
    return HistoryDay(date=check.day.isoformat(), total=total or 0.0, is_anomaly=kind is not None, anomaly_type=kind)


@router.get("/data", response_model=DashboardResponse)
def dashboard_data(asked: SubjectDep, clients: ClientsDep, days: Annotated[Days, Query()] = 30) -> DashboardResponse:
    """The last `days` UTC days, today included, oldest first."""
    customer_id, metric = asked.customer_id, asked.metric
    at = now_ms()
    today = utc_day(at)
    dates = history_dates(today, days)
    database = clients.settings.clickhouse_database
    vectors = day_vectors(clients.clickhouse, database, metric, customer_id, dates[0], days)
    lead = DEFAULT_BASELINE_DAYS  # daily values before the first day, for its Z-score
    daily = bucket_values(
        clients.clickhouse, database, metric, customer_id,
        day_start_ms(dates[0]) - lead * DAY_MS, DAY_MS, lead + days,
    )  # fmt: skip
    baselines = stored_baselines(clients.redis, customer_id, metric.code)
    checks = [check_date(day, vector, baselines.get(day.weekday()), at) for day, vector in zip(dates, vectors)]
    expected = baselines.get(today.weekday())
    return DashboardResponse(
        customer_id=customer_id,
        metric=metric.code,
        usage_history=[history_day(c, daily[lead + i], daily[i : lead + i], today) for i, c in enumerate(checks)],
        current_pattern=vectors[-1],
        baseline_pattern=[v * expected.volume for v in expected.vector] if expected else [0.0] * HOURS,
        latest_check=fraud_check_out(asked, checks[-1]),
    )
