"""Streaming fraud and anomaly detection per (customer, metric).

`UsageDetector` is the state of one key and has one method per input
(`observe`); the dataflow drives it through `stateful_flat_map`, Bytewax
recovery snapshots it (plain picklable data), and unit tests drive it
without Bytewax. The maths is `operators.detection`, the same functions the
on-demand API endpoints use.

Time is event time, in UTC days of 24 hourly buckets:

- An hour *closes* when an event newer than its end plus `lateness_ms`
  arrives (bounded lateness, per key). A closed hour's value is checked
  against the history of the same hour of day (Z-score, `usage_spike`, only
  upwards, with the spread at least the square root of the mean as for
  Poisson counts) and then added to it. Events for an hour that has closed still count for the
  day's pattern, not for that hour's Z-score.
- A day closes when an event of a later day arrives: its total is checked
  against past daily totals (`daily_anomaly`), then the day is learned into
  its weekday's baseline (online mean, `merge_day`). Events of a closed day
  are late: they are stored (the sinks do not depend on this) but ignored
  here.
- While a day is in progress, at most every `check_interval_ms` of event
  time: the hour in progress is checked for a spike (its value so far only
  grows), and the day's closed hours are compared with its weekday
  baseline (`check_partial_day`) once the evidence is enough: a baseline
  learned from at least `min_baseline_days` days, and at least
  `min_evidence_share` of its daily volume (or `min_evidence` units) seen,
  and a moved pattern must also be unlikely as noise: the day's event
  counts per closed hour are tested against the baseline's shape
  (`shape_deviation` ≥ 4, p < 3e-5 per check), since a few events an hour make the
  cosine similarity alone dip below 0.9 by chance. So a stolen key used at night is caught one hour (plus lateness) after
  its traffic reaches that evidence.

Alerts carry an id derived from (customer, metric, kind, severity, window),
so one finding fires once per window however often it is re-detected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterable, Literal

from operators.alerts import Alert
from operators.detection import (
    HOURS,
    RunningStats,
    WeekdayBaseline,
    check_partial_day,
    merge_day,
    severity,
    shape_deviation,
    zscore,
)
from operators.events import UsageEvent
from operators.metrics import DEFAULT_CATALOG, DEFAULT_OBSERVED, DETECTOR_COMBINE, Metric, observe, observed_metrics

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

Combine = Literal["sum", "max"]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    threshold: float = 3.0  # Z-score of a critical spike
    lateness_ms: int = 5 * 60_000  # how long an hour waits for late events
    check_interval_ms: int = 5 * 60_000  # cadence of in-progress checks (event time)
    min_hour_samples: int = 7  # past values of an hour of day before its Z-score counts
    min_day_samples: int = 7  # past daily totals before a daily Z-score counts
    min_baseline_days: int = 2  # days behind a weekday baseline before it is trusted
    min_evidence: float = 20.0  # units seen today before a pattern check counts...
    min_evidence_share: float = 0.25  # ...or this share of the baseline's daily volume, if larger
    # A moved pattern must be this unlikely as noise: p < 3e-5 per check, as a
    # day is checked after each of its hours (about 1e-3 a day in all).
    min_shape_deviation: float = 4.0
    max_idle_days: int = 30  # empty days counted as zeros between two active days


@dataclass
class UsageDetector:
    customer_id: str
    metric: str
    combine: Combine = "sum"  # how values of one hour add up (MAX metrics: "max")
    config: DetectorConfig = field(default_factory=DetectorConfig)
    baselines: dict[int, WeekdayBaseline] = field(default_factory=dict)
    day: int | None = None  # UTC day number being filled (Unix ms // DAY_MS)
    hours: list[float] = field(default_factory=lambda: [0.0] * HOURS)
    counts: list[int] = field(default_factory=lambda: [0] * HOURS)  # events behind `hours`
    closed_hours: int = 0  # hours of `day` already checked and learned
    newest_ms: int = 0
    next_check_ms: int = 0
    hour_stats: list[RunningStats] = field(default_factory=lambda: [RunningStats() for _ in range(HOURS)])
    day_stats: RunningStats = field(default_factory=RunningStats)
    fired: set[str] = field(default_factory=set)  # alert ids fired for `day`
    late_events: int = 0

    def __getstate__(self) -> tuple:
        """The state as plain tuples and lists instead of nested dataclasses.

        Bytewax copies (`__deepcopy__`) and then pickles every changed
        detector at each recovery snapshot; with 24 `RunningStats` and up to
        7 `WeekdayBaseline` objects inside, the default form cost ~55 µs to
        pickle and ~35 µs to unpickle, and snapshots were a tenth of the
        dataflow's time. Baselines are immutable, so a copy shares them.
        """
        return (
            self.customer_id, self.metric, self.combine, self.config,
            {weekday: (b.vector, b.volume, b.days) for weekday, b in self.baselines.items()},
            self.day, list(self.hours), list(self.counts), self.closed_hours, self.newest_ms, self.next_check_ms,
            [(s.count, s.mean, s.m2) for s in self.hour_stats],
            (self.day_stats.count, self.day_stats.mean, self.day_stats.m2),
            set(self.fired), self.late_events,
        )  # fmt: skip

    def __setstate__(self, state: tuple | dict) -> None:
        if isinstance(state, dict):  # a snapshot taken before __getstate__ existed
            self.__dict__.update(state)
            return
        (
            self.customer_id, self.metric, self.combine, self.config, baselines,
            self.day, self.hours, self.counts, self.closed_hours, self.newest_ms, self.next_check_ms,
            hour_stats, day_stats, self.fired, self.late_events,
        ) = state  # fmt: skip
        self.baselines = {weekday: WeekdayBaseline(*b) for weekday, b in baselines.items()}
        self.hour_stats = [RunningStats(*s) for s in hour_stats]
        self.day_stats = RunningStats(*day_stats)

    def __deepcopy__(self, memo: dict) -> "UsageDetector":
        """What Bytewax snapshots: a copy through the compact state, without
        pickling it (copy.deepcopy's walk was a third of the dataflow's time)."""
        copy = UsageDetector.__new__(UsageDetector)
        copy.__setstate__(self.__getstate__())
        return copy

    def observe(self, timestamp_ms: int, value: float, now_ms: int, events: int = 1) -> list[Alert]:
        """Take the value of `events` events of one hour; return the alerts it makes due."""
        day = timestamp_ms // DAY_MS
        alerts: list[Alert] = []
        if self.day is None:
            self.day = day
        if day < self.day:
            self.late_events += 1
            return alerts
        if day > self.day:
            alerts += self._close_day(now_ms)
            idle = min(day - self.day - 1, self.config.max_idle_days)
            for _ in range(idle):
                self.day_stats.add(0.0)
            self._start_day(day)
        hour = (timestamp_ms - day * DAY_MS) // HOUR_MS
        self.hours[hour] = self.hours[hour] + value if self.combine == "sum" else max(self.hours[hour], value)
        self.counts[hour] += events
        self.newest_ms = max(self.newest_ms, timestamp_ms)
        alerts += self._close_hours(now_ms)
        if self.newest_ms >= self.next_check_ms:
            self.next_check_ms = self.newest_ms + self.config.check_interval_ms
            alerts += self._check_in_progress(now_ms)
        return alerts

    # -- windows -------------------------------------------------------------

    def _start_day(self, day: int) -> None:
        self.day = day
        self.hours = [0.0] * HOURS
        self.counts = [0] * HOURS
        self.closed_hours = 0
        self.fired = set()
        self.next_check_ms = 0

    def _close_hours(self, now_ms: int, until_hour: int | None = None) -> list[Alert]:
        alerts: list[Alert] = []
        assert self.day is not None
        day_start = self.day * DAY_MS
        while self.closed_hours < HOURS:
            hour = self.closed_hours
            hour_end = day_start + (hour + 1) * HOUR_MS
            if until_hour is None and hour_end + self.config.lateness_ms > self.newest_ms:
                break
            if until_hour is not None and hour >= until_hour:
                break
            alerts += self._check_hour(hour, self.hours[hour], now_ms, in_progress=False)
            self.hour_stats[hour].add(self.hours[hour])
            self.closed_hours += 1
        return alerts

    def _close_day(self, now_ms: int) -> list[Alert]:
        assert self.day is not None
        alerts = self._close_hours(now_ms, until_hour=HOURS)
        total = sum(self.hours)
        stats = self.day_stats
        if stats.count >= self.config.min_day_samples:
            z = zscore(total, stats.mean, stats.stddev)
            level = severity(z, self.config.threshold)
            if level != "normal":
                alerts += self._fire(
                    "daily_anomaly", level, z, self.day * DAY_MS, (self.day + 1) * DAY_MS, now_ms,
                    {"value": total, "mean": stats.mean, "stddev": stats.stddev},
                )  # fmt: skip
        stats.add(total)
        weekday = self._weekday()
        learned = merge_day(self.baselines.get(weekday), self.hours)
        if learned is not None:
            self.baselines[weekday] = learned
        return alerts

    # -- checks --------------------------------------------------------------

    def _check_hour(self, hour: int, value: float, now_ms: int, in_progress: bool) -> list[Alert]:
        stats = self.hour_stats[hour]
        if stats.count < self.config.min_hour_samples:
            return []
        # Counts of a steady hour still vary by about their square root
        # (Poisson); a history that happened to be steadier than that must
        # not turn ordinary noise into spikes.
        spread = max(stats.stddev, math.sqrt(max(stats.mean, 0.0)))
        z = zscore(value, stats.mean, spread)
        if z <= 0:
            return []  # a quiet hour is not a spike (a quiet day is a daily_anomaly)
        level = severity(z, self.config.threshold)
        if level == "normal":
            return []
        assert self.day is not None
        start = self.day * DAY_MS + hour * HOUR_MS
        return self._fire(
            "usage_spike", level, z, start, start + HOUR_MS, now_ms,
            {"value": value, "mean": stats.mean, "stddev": stats.stddev, "spread": spread, "hour": hour,
             "partial": in_progress},
        )  # fmt: skip

    def _check_in_progress(self, now_ms: int) -> list[Alert]:
        assert self.day is not None
        hour = int((self.newest_ms - self.day * DAY_MS) // HOUR_MS)
        alerts = []
        if hour >= self.closed_hours:
            alerts += self._check_hour(hour, self.hours[hour], now_ms, in_progress=True)
        # The pattern is judged on closed hours only: a half-lived hour would
        # distort the shape of the day.
        closed = self.closed_hours
        baseline = self.baselines.get(self._weekday())
        if closed == 0 or baseline is None or baseline.days < self.config.min_baseline_days:
            return alerts
        seen = sum(self.hours[:closed])
        if seen < max(self.config.min_evidence, self.config.min_evidence_share * baseline.volume):
            return alerts
        verdict = check_partial_day(self.hours, closed, baseline)
        deviation = shape_deviation(self.counts[:closed], baseline.vector[:closed])
        if verdict.kind in ("pattern_shift", "pattern_and_volume") and deviation < self.config.min_shape_deviation:
            # The shape differs no more than a few events an hour do by chance.
            verdict = replace(verdict, kind="volume_change" if verdict.kind == "pattern_and_volume" else None)
        if verdict.kind is None:
            return alerts
        level = "critical" if verdict.kind != "volume_change" else "warning"
        return alerts + self._fire(
            "fraud_pattern", level, verdict.similarity, self.day * DAY_MS, (self.day + 1) * DAY_MS, now_ms,
            {
                "pattern": verdict.kind,
                "is_fraud": verdict.is_fraud,
                "similarity": verdict.similarity,
                "volume_change_percent": verdict.volume_change_percent,
                "hours_observed": closed,
                "shape_deviation": deviation,
                "current_vector": list(self.hours),
                "baseline_vector": list(baseline.vector),
                "baseline_volume": baseline.volume,
            },
        )  # fmt: skip

    def _fire(self, kind, level, score, start, end, now_ms, evidence) -> list[Alert]:
        alert = Alert(
            customer_id=self.customer_id, metric=self.metric, kind=kind, severity=level, score=float(score),
            window_start=start, window_end=end, evidence=evidence, created_at=now_ms, event_time=self.newest_ms,
        )  # fmt: skip
        if alert.alert_id in self.fired:
            return []
        self.fired.add(alert.alert_id)
        return [alert]

    def _weekday(self) -> int:
        assert self.day is not None
        return datetime.fromtimestamp(self.day * DAY_MS / 1000, tz=timezone.utc).weekday()


@dataclass(frozen=True, slots=True)
class Observation:
    """What one batch of events says about one (customer, metric, hour)."""

    customer_id: str
    metric: str
    timestamp: int  # Unix ms of the newest of the events folded in
    value: float  # their values combined as the metric combines (sum or max)
    events: int = 1  # how many events were folded in

    @property
    def key(self) -> str:
        """The routing key of the detector that takes it."""
        return f"{self.customer_id}/{self.metric}"


def hourly_observations(
    events: Iterable[UsageEvent], catalog: tuple[Metric, ...] = DEFAULT_CATALOG
) -> list[Observation]:
    """The events of one batch folded per (customer, metric, hour), oldest hour first.

    A batch holds many events of the same customer and hour; the detector
    only needs their combined value and the newest time, so folding them
    first saves a state lookup per event without changing what an hour
    adds up to.
    """
    observed = DEFAULT_OBSERVED if catalog is DEFAULT_CATALOG else observed_metrics(catalog)
    adds = {m.code: DETECTOR_COMBINE[m.aggregation] == "sum" for m in catalog if m.aggregation in DETECTOR_COMBINE}
    groups: dict[tuple[str, str, int], list[float]] = {}  # key -> [newest ts, value, events]
    for event in events:
        timestamp = event.timestamp
        hour = timestamp // HOUR_MS
        for metric, value in observe(event.event_type, event.properties, observed):
            group = groups.get((event.customer_id, metric, hour))
            if group is None:
                groups[(event.customer_id, metric, hour)] = [timestamp, value, 1]
                continue
            if timestamp > group[0]:
                group[0] = timestamp
            group[1] = group[1] + value if adds[metric] else max(group[1], value)
            group[2] += 1
    return [
        Observation(customer_id, metric, int(newest), value, int(count))
        for (customer_id, metric, _hour), (newest, value, count) in sorted(groups.items(), key=lambda kv: kv[0][2])
    ]


def combine_of(metric: str, catalog: tuple[Metric, ...] = DEFAULT_CATALOG) -> Combine:
    for entry in catalog:
        if entry.code == metric:
            return DETECTOR_COMBINE[entry.aggregation]  # type: ignore[return-value]
    raise KeyError(metric)
