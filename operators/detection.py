"""The maths of fraud and anomaly detection, shared by the on-demand API
endpoints and the streaming detectors of the dataflow.

Two signals:

- **Pattern** (stolen key used from another time zone): a customer's usage
  over the 24 UTC hours of a day, normalised to sum to 1, compared by cosine
  similarity with the mean normalised vector of the same weekday in the past
  (the weekday baseline). Fraud, as the contract defines it, is a similarity
  below 0.9 while the day's volume stays within +/-50 % of the baseline's
  mean daily volume: an attacker blending in. A volume change alone, or both
  together, are flagged too, under other kinds.
- **Volume** (runaway integration): the Z-score of a value against the mean
  and standard deviation of comparable past values; |z| >= threshold is
  critical, |z| >= 0.66 x threshold a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Iterable, Literal, Sequence

import numpy as np

HOURS = 24
SIMILARITY_THRESHOLD = 0.9
VOLUME_TOLERANCE = 0.5  # +/-50 %
WARNING_FRACTION = 0.66

Severity = Literal["normal", "warning", "critical"]
PatternKind = Literal["pattern_shift", "volume_change", "pattern_and_volume"]


def normalize(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """`vector` scaled to sum to 1 (all zeros stays all zeros)."""
    v = np.asarray(vector, dtype=float)
    total = v.sum()
    return v / total if total > 0 else np.zeros_like(v)


def cosine(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cosine similarity in [0, 1] for non-negative vectors; 1.0 when either
    is all zeros (nothing to compare is no evidence of a change)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0
    return float(np.clip(np.dot(a, b) / (na * nb), 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class WeekdayBaseline:
    """What a usual day of one weekday looks like."""

    vector: tuple[float, ...]  # mean of the days' normalised 24-hour vectors
    volume: float  # mean daily volume
    days: int  # how many days it was learned from


def build_baselines(days: Iterable[tuple[date, Sequence[float]]]) -> dict[int, WeekdayBaseline]:
    """Per-weekday baselines (Monday = 0) from (day, raw 24-hour vector) pairs.

    Days without usage are skipped: a day the customer did not use the
    service says nothing about the shape of a usual day.
    """
    grouped: dict[int, list[np.ndarray]] = {}
    for day, vector in days:
        v = np.asarray(vector, dtype=float)
        if v.shape != (HOURS,):
            raise ValueError("a day vector has 24 hourly values")
        if v.sum() > 0:
            grouped.setdefault(day.weekday(), []).append(v)
    return {
        weekday: WeekdayBaseline(
            vector=tuple(float(x) for x in np.mean([normalize(v) for v in vectors], axis=0)),
            volume=float(np.mean([v.sum() for v in vectors])),
            days=len(vectors),
        )
        for weekday, vectors in grouped.items()
    }


def merge_day(baseline: WeekdayBaseline | None, vector: Sequence[float]) -> WeekdayBaseline | None:
    """The baseline after learning one more closed day (online mean)."""
    v = np.asarray(vector, dtype=float)
    if v.sum() <= 0:
        return baseline
    if baseline is None:
        return WeekdayBaseline(tuple(float(x) for x in normalize(v)), float(v.sum()), 1)
    n = baseline.days + 1
    mean_vector = np.asarray(baseline.vector) + (normalize(v) - np.asarray(baseline.vector)) / n
    mean_volume = baseline.volume + (float(v.sum()) - baseline.volume) / n
    return WeekdayBaseline(tuple(float(x) for x in mean_vector), mean_volume, n)


@dataclass(frozen=True, slots=True)
class PatternVerdict:
    similarity: float
    volume_change_percent: float | None  # None without a baseline volume
    kind: PatternKind | None  # None: nothing unusual

    @property
    def is_fraud(self) -> bool:
        """The contract's definition: the pattern moved, the volume did not."""
        return self.kind == "pattern_shift"


def classify_pattern(
    similarity: float,
    volume: float,
    expected_volume: float,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
    volume_tolerance: float = VOLUME_TOLERANCE,
) -> PatternVerdict:
    if expected_volume <= 0:
        return PatternVerdict(similarity, None, None)
    change = (volume - expected_volume) / expected_volume
    shifted = similarity < similarity_threshold
    volume_moved = abs(change) > volume_tolerance
    kind: PatternKind | None = None
    if shifted and not volume_moved:
        kind = "pattern_shift"
    elif shifted and volume_moved:
        kind = "pattern_and_volume"
    elif volume_moved:
        kind = "volume_change"
    return PatternVerdict(similarity, round(change * 100, 2), kind)


def check_day(vector: Sequence[float], baseline: WeekdayBaseline | None) -> PatternVerdict:
    """A whole day against its weekday baseline (no baseline: similarity 1, not fraud)."""
    if baseline is None:
        return PatternVerdict(1.0, None, None)
    v = np.asarray(vector, dtype=float)
    return classify_pattern(cosine(normalize(v), baseline.vector), float(v.sum()), baseline.volume)


def check_partial_day(
    vector: Sequence[float], hours_closed: int, baseline: WeekdayBaseline | None
) -> PatternVerdict:
    """A day in progress, after its first `hours_closed` hours, against the baseline.

    Method: both vectors are cut to the closed hours before comparing, so an
    afternoon not yet lived is not mistaken for a change. Traffic in hours
    the baseline says are quiet (night-time use of a stolen key) scores a
    low similarity as soon as it happens. Volume is one-sided before the day
    ends: only a total that already exceeds the usual day by more than the
    tolerance is certain to be a volume change (a shortfall may still be
    made up), so `volume_change_percent` is today-so-far against the whole
    usual day.
    """
    if baseline is None or hours_closed <= 0 or baseline.volume <= 0:
        return PatternVerdict(1.0, None, None)
    observed = np.asarray(vector, dtype=float)[:hours_closed]
    usual = np.asarray(baseline.vector)[:hours_closed]
    if observed.sum() > 0 and usual.sum() == 0:
        similarity = 0.0  # all of today's traffic falls in hours that are usually empty
    else:
        similarity = cosine(observed, usual)
    change = (float(observed.sum()) - baseline.volume) / baseline.volume
    shifted = similarity < SIMILARITY_THRESHOLD
    volume_moved = change > VOLUME_TOLERANCE
    kind: PatternKind | None = None
    if shifted:
        kind = "pattern_and_volume" if volume_moved else "pattern_shift"
    elif volume_moved:
        kind = "volume_change"
    return PatternVerdict(similarity, round(change * 100, 2), kind)


def shape_deviation(counts: Sequence[float], shape: Sequence[float]) -> float:
    """How many standard deviations today's event counts per hour are from
    the hourly shape `shape` (the same hours), as a normal score.

    Cosine similarity alone cannot tell a moved pattern from the noise of a
    few events an hour: ten calls an hour in 7 business hours score below
    0.9 against their own baseline about once in five days. This is
    Pearson's chi-square of the counts against the shape scaled to the same
    total (an hour the shape says is empty may still see half an event
    before it counts against it), turned into a normal score with the
    Wilson-Hilferty approximation, so no statistics library is needed:
    >= 3.09 means p < 0.001, >= 4 p < 3e-5.
    """
    observed = np.asarray(counts, dtype=float)
    usual = np.asarray(shape, dtype=float)[: len(observed)]
    total = observed.sum()
    if total <= 0 or len(observed) < 2:
        return 0.0
    if usual.sum() > 0:
        expected = np.maximum(usual / usual.sum() * total, 0.5)
    else:
        expected = np.full(len(observed), 0.5)
    x2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    return ((x2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))


def zscore(value: float, mean: float, stddev: float) -> float:
    """Standard score; with no spread, any difference is infinitely unusual."""
    if stddev > 0:
        return (value - mean) / stddev
    if value == mean:
        return 0.0
    return math.copysign(math.inf, value - mean)


def severity(z: float, threshold: float = 3.0) -> Severity:
    if abs(z) >= threshold:
        return "critical"
    if abs(z) >= WARNING_FRACTION * threshold:
        return "warning"
    return "normal"


@dataclass(slots=True)
class RunningStats:
    """Mean and standard deviation of a stream, one value at a time (Welford).

    Plain data, so Bytewax can snapshot it and tests can drive it.
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    @property
    def stddev(self) -> float:
        """Sample standard deviation (n - 1), 0 below two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


def describe(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of `values`; (0, 0) when empty."""
    stats = RunningStats()
    for value in values:
        stats.add(value)
    return stats.mean, stats.stddev
