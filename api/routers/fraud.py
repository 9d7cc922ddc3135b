"""On-demand detection: GET /v1/anomalies/check, POST /v1/fraud/baselines/build,
GET /v1/fraud/check.

The maths is `operators.detection`, the same the streaming detectors use;
the baselines built here are the ones they load from Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, model_serializer

from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.detection import (
    DAY_MS,
    DEFAULT_BASELINE_DAYS,
    DEFAULT_THRESHOLD,
    HOURS,
    MAX_DAYS,
    WEEKDAYS,
    DayCheck,
    baseline_samples,
    bucket_values,
    check_date,
    check_volume,
    day_vectors,
    finite_or_none,
    history_dates,
    now_ms,
    store_baselines,
    stored_baselines,
    utc_day,
)
from api.schemas import CustomerId, EpochMs, ExactJSONResponse, JsonDecimal
from api.usage import query_usage
from operators.detection import PatternKind, Severity, build_baselines, normalize
from operators.metrics import Metric, catalog_by_code

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1", tags=["fraud"])

MetricCode = Annotated[str, Query(max_length=100)]
IsoDate = Annotated[str, Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="a UTC day, YYYY-MM-DD")]
Days = Annotated[int, Field(ge=1, le=MAX_DAYS)]


def known_metric(code: str) -> Metric:
    found = catalog_by_code().get(code)
    if found is None:
        raise HTTPException(404, f"unknown metric '{code}' (see GET /v1/metrics)")
    return found


@dataclass(frozen=True, slots=True)
class Subject:
    """The (customer, metric) a detection query is about."""

    customer_id: str
    metric: Metric


def subject(key: ApiKeyDep, customer_id: Annotated[CustomerId, Query()], metric: MetricCode) -> Subject:
    """The caller's own customer (else 403) and a metric of the catalog (else 404)."""
    ensure_own_customer(key, customer_id)
    return Subject(customer_id, known_metric(metric))


SubjectDep = Annotated[Subject, Depends(subject)]


def past_day(text: str, today: date) -> date:
    """A YYYY-MM-DD day that has begun (today included)."""
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise HTTPException(400, f"date: {exc}") from exc
    if not date(1970, 1, 1) <= day <= today:
        raise HTTPException(400, f"date must be between 1970-01-01 and today ({today.isoformat()}, UTC)")
    return day


# -- anomalies -----------------------------------------------------------------


class Period(BaseModel):
    start: int
    end: int


class Baseline(BaseModel):
    mean: float
    stddev: float
    sample_count: int


class AnomalyCheckResponse(BaseModel):
    customer_id: str
    metric: str
    period: Period
    current_value: JsonDecimal
    baseline: Baseline
    z_score: float | None  # null: infinitely unusual (no spread in the baseline)
    is_anomaly: bool
    severity: Severity
    unit: str


@router.get("/anomalies/check", response_model=AnomalyCheckResponse, response_class=ExactJSONResponse)
def check_anomaly(
    asked: SubjectDep,
    clients: ClientsDep,
    current_start: Annotated[EpochMs, Query()],
    current_end: Annotated[EpochMs, Query()],
    baseline_days: Annotated[Days, Query()] = DEFAULT_BASELINE_DAYS,
    threshold: Annotated[float, Query(gt=0, le=1000, allow_inf_nan=False)] = DEFAULT_THRESHOLD,
) -> AnomalyCheckResponse:
    """The usage of [current_start, current_end] (ms, inclusive) against the
    daily values of the `baseline_days` 24-hour windows before current_start."""
    if current_start > current_end:
        raise HTTPException(400, "current_start must not be after current_end")
    database = clients.settings.clickhouse_database
    customer_id, metric = asked.customer_id, asked.metric
    daily = bucket_values(
        clients.clickhouse, database, metric, customer_id,
        current_start - baseline_days * DAY_MS, DAY_MS, baseline_days,
    )  # fmt: skip
    current = query_usage(clients.clickhouse, database, metric, customer_id, current_start, current_end).value
    result = check_volume(float(current), baseline_samples(daily), threshold)
    return AnomalyCheckResponse(
        customer_id=customer_id,
        metric=metric.code,
        period=Period(start=current_start, end=current_end),
        current_value=current,
        baseline=Baseline(mean=result.mean, stddev=result.stddev, sample_count=result.sample_count),
        z_score=finite_or_none(result.z_score),
        is_anomaly=result.is_anomaly,
        severity=result.severity,
        unit=metric.unit,
    )


# -- weekday baselines -----------------------------------------------------------


class BuildBaselinesRequest(BaseModel):
    customer_id: CustomerId
    metric: Annotated[str, Field(min_length=1, max_length=100)]
    days: Days = 28


class BuildBaselinesResponse(BaseModel):
    customer_id: str
    metric: str
    days_processed: int
    weekdays_built: list[str]


@router.post("/fraud/baselines/build", response_model=BuildBaselinesResponse)
def build_weekday_baselines(
    key: ApiKeyDep, clients: ClientsDep, body: BuildBaselinesRequest
) -> BuildBaselinesResponse:
    """Learn the weekday baselines of (customer, metric) from the `days`
    whole UTC days before today, replacing the stored ones."""
    ensure_own_customer(key, body.customer_id)
    found = known_metric(body.metric)
    dates = history_dates(utc_day(now_ms()) - timedelta(days=1), body.days)
    vectors = day_vectors(
        clients.clickhouse, clients.settings.clickhouse_database, found, body.customer_id, dates[0], body.days
    )
    baselines = build_baselines(zip(dates, vectors))
    store_baselines(clients.redis, body.customer_id, body.metric, baselines)
    built = [WEEKDAYS[weekday] for weekday in sorted(baselines)]
    days_processed = sum(b.days for b in baselines.values())
    log.info(
        "baselines_built", customer_id=body.customer_id, metric=body.metric,
        days=body.days, days_processed=days_processed, weekdays=built,
    )  # fmt: skip
    return BuildBaselinesResponse(
        customer_id=body.customer_id, metric=body.metric, days_processed=days_processed, weekdays_built=built
    )


# -- pattern check ---------------------------------------------------------------


class OmitNone(BaseModel):
    """A model whose optional fields are left out of the JSON when absent
    (`"fraud_type"?` in the contract), also where it is nested."""

    @model_serializer(mode="wrap")
    def _omit_none(self, handler):
        return {name: value for name, value in handler(self).items() if value is not None}


class FraudCheckResponse(OmitNone):
    customer_id: str
    metric: str
    date: str
    similarity: float
    volume_change_percent: float
    is_fraud: bool
    fraud_type: Literal["pattern_shift"] | None = None
    pattern: PatternKind | None = None  # what, if anything, is unusual (fraud or not)
    volume: float
    hours_checked: int
    current_vector: list[float]
    baseline_vector: list[float]
    baseline_volume: float


def fraud_check_out(asked: Subject, check: DayCheck) -> FraudCheckResponse:
    verdict, baseline = check.verdict, check.baseline
    return FraudCheckResponse(
        customer_id=asked.customer_id,
        metric=asked.metric.code,
        date=check.day.isoformat(),
        similarity=verdict.similarity,
        volume_change_percent=verdict.volume_change_percent or 0.0,
        is_fraud=verdict.is_fraud,
        fraud_type="pattern_shift" if verdict.is_fraud else None,
        pattern=verdict.kind,
        volume=sum(check.vector),
        hours_checked=check.hours_checked,
        current_vector=normalize(check.vector).tolist(),
        baseline_vector=list(baseline.vector) if baseline else [0.0] * HOURS,
        baseline_volume=baseline.volume if baseline else 0.0,
    )


@router.get("/fraud/check", response_model=FraudCheckResponse)
def check_fraud(asked: SubjectDep, clients: ClientsDep, date: IsoDate) -> FraudCheckResponse:
    """The day's 24-hour pattern against the stored baseline of its weekday."""
    at = now_ms()
    day = past_day(date, utc_day(at))
    database = clients.settings.clickhouse_database
    [vector] = day_vectors(clients.clickhouse, database, asked.metric, asked.customer_id, day, 1)
    baseline = stored_baselines(clients.redis, asked.customer_id, asked.metric.code).get(day.weekday())
    return fraud_check_out(asked, check_date(day, vector, baseline, at))
