"""Usage shaped for the on-demand detection endpoints, and the few choices
that turn `operators.detection`'s maths into their answers.

ClickHouse gives a metric's values per fixed-size time bucket (hours for
the 24-hour pattern of a UTC day, 24-hour windows for daily values), each
bucket aggregated with the metric's own aggregation (`api.usage.AGGREGATES`:
an hour of a MAX metric is that hour's peak, a day of it the day's peak).
Every value is a bound parameter and reads use FINAL, as in `api.usage`.

Redis holds the weekday baselines (`operators.baselines`), shared with the
streaming detectors of the dataflow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Sequence

import redis
from clickhouse_connect.driver.client import Client as ClickHouseClient

from api.errors import ServiceUnavailable
from api.usage import AGGREGATES, metric_condition, metric_parameters, run_query
from operators.baselines import load_baselines, save_baselines
from operators.detection import (
    HOURS,
    PatternVerdict,
    Severity,
    WeekdayBaseline,
    check_day,
    check_partial_day,
    describe,
    severity,
    zscore,
)
from operators.metrics import Metric

HOUR_MS = 3_600_000
DAY_MS = HOURS * HOUR_MS
EPOCH = date(1970, 1, 1)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

DEFAULT_BASELINE_DAYS = 30
DEFAULT_THRESHOLD = 3.0
MAX_DAYS = 90  # the longest history one request reads (days, baseline_days)
MIN_SAMPLES = 2  # a spread needs two days; with fewer, no value is unusual


def now_ms() -> int:
    return int(time.time() * 1000)


def utc_day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date()


def day_start_ms(day: date) -> int:
    return (day - EPOCH).days * DAY_MS


def bucket_values(
    client: ClickHouseClient,
    database: str,
    metric: Metric,
    customer_id: str,
    origin_ms: int,
    bucket_ms: int,
    buckets: int,
) -> list[float | None]:
    """`metric` per bucket [origin + i * bucket_ms, origin + (i + 1) * bucket_ms)
    for i < `buckets`; None where the customer had no usage of it.

    None and 0 differ on purpose: the anomaly baseline starts at the first
    bucket with usage (`baseline_samples`).
    """
    bucket_of = "intDiv(toUnixTimestamp64Milli(timestamp) - {start:Int64}, {bucket:Int64})"
    source = f"FROM `{database}`.events FINAL WHERE {metric_condition(metric, end_inclusive=False)}"  # sql-ok
    sql = f"SELECT {bucket_of} AS b, {AGGREGATES[metric.aggregation]} {source} GROUP BY b ORDER BY b"  # sql-ok
    end_ms = origin_ms + bucket_ms * buckets
    parameters = {**metric_parameters(metric, customer_id, origin_ms, end_ms), "bucket": bucket_ms}
    values: list[float | None] = [None] * buckets
    for bucket, value in run_query(client, sql, parameters):
        values[bucket] = float(value)
    return values


def day_vectors(
    client: ClickHouseClient, database: str, metric: Metric, customer_id: str, first: date, days: int
) -> list[list[float]]:
    """The 24 hourly values (UTC) of each of `days` days from `first`; hours
    without usage are 0."""
    hours = bucket_values(client, database, metric, customer_id, day_start_ms(first), HOUR_MS, days * HOURS)
    return [[v or 0.0 for v in hours[d * HOURS : (d + 1) * HOURS]] for d in range(days)]


def baseline_samples(values: Sequence[float | None]) -> list[float]:
    """Daily values as samples of a usual day: from the first day with usage
    on, a day without usage is a sample of 0 (a quiet day is part of what is
    usual); the days before it are not samples (the customer had not started,
    and counting them would make any real usage look like a spike)."""
    first = next((i for i, v in enumerate(values) if v is not None), len(values))
    return [v or 0.0 for v in values[first:]]


@dataclass(frozen=True, slots=True)
class VolumeCheck:
    mean: float
    stddev: float
    sample_count: int
    z_score: float  # +/-inf: no spread in the samples, and the value differs
    severity: Severity

    @property
    def is_anomaly(self) -> bool:
        return self.severity == "critical"


def check_volume(value: float, samples: Sequence[float], threshold: float) -> VolumeCheck:
    """`value` against the daily `samples` (sample standard deviation)."""
    mean, stddev = describe(samples)
    z = zscore(value, mean, stddev) if len(samples) >= MIN_SAMPLES else 0.0
    return VolumeCheck(mean, stddev, len(samples), z, severity(z, threshold))


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: an infinitely unusual Z-score is written as null."""
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class DayCheck:
    """One UTC day's pattern against its weekday baseline."""

    day: date
    vector: list[float]  # raw hourly values
    baseline: WeekdayBaseline | None
    verdict: PatternVerdict
    hours_checked: int  # 24 for a past day; the closed hours of today


def check_date(day: date, vector: list[float], baseline: WeekdayBaseline | None, at_ms: int) -> DayCheck:
    """A past day is judged whole; today only on its closed hours, as the
    streaming detector does, so an afternoon not yet lived is no change."""
    if day < utc_day(at_ms):
        return DayCheck(day, vector, baseline, check_day(vector, baseline), HOURS)
    closed = int((at_ms - day_start_ms(day)) // HOUR_MS)
    return DayCheck(day, vector, baseline, check_partial_day(vector, closed, baseline), closed)


def stored_baselines(client: redis.Redis, customer_id: str, metric: str) -> dict[int, WeekdayBaseline]:
    try:
        return load_baselines(client, customer_id, metric)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"baseline store unavailable: {exc}") from exc


def store_baselines(
    client: redis.Redis, customer_id: str, metric: str, baselines: dict[int, WeekdayBaseline]
) -> None:
    try:
        save_baselines(client, customer_id, metric, baselines)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"baseline store unavailable: {exc}") from exc


def history_dates(last: date, days: int) -> list[date]:
    """The `days` dates ending with `last`, oldest first."""
    return [last - timedelta(days=days - 1 - i) for i in range(days)]
