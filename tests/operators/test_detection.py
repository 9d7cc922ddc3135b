import math
from datetime import date, timedelta

import numpy as np
import pytest

from operators.detection import (
    HOURS,
    RunningStats,
    WeekdayBaseline,
    build_baselines,
    check_day,
    check_partial_day,
    classify_pattern,
    cosine,
    describe,
    merge_day,
    normalize,
    severity,
    zscore,
)

BUSINESS = np.array([0] * 9 + [100] * 8 + [0] * 7, dtype=float)  # 09:00-17:00 UTC, 800/day
NIGHT = np.array([100] * 8 + [0] * 16, dtype=float)  # 00:00-08:00, same volume


def monday(weeks_back: int) -> date:
    return date(2026, 11, 16) - timedelta(weeks=weeks_back)


def baseline_of(vector=BUSINESS, days=4) -> WeekdayBaseline:
    return build_baselines([(monday(i), vector) for i in range(days)])[0]


def test_normalize_and_cosine():
    assert normalize([1, 1, 2]).tolist() == [0.25, 0.25, 0.5]
    assert normalize([0, 0]).tolist() == [0, 0]
    assert cosine(BUSINESS, BUSINESS * 3) == pytest.approx(1.0)
    assert cosine(BUSINESS, NIGHT) == 0.0
    assert cosine([0] * HOURS, BUSINESS) == 1.0


def test_baselines_average_normalised_days_per_weekday():
    tuesday = monday(0) + timedelta(days=1)
    doubled = BUSINESS * 2
    baselines = build_baselines([(monday(0), BUSINESS), (monday(1), doubled), (tuesday, NIGHT), (monday(2), np.zeros(24))])
    assert set(baselines) == {0, 1}
    assert baselines[0].days == 2  # the empty Monday is skipped
    assert baselines[0].volume == 1200
    assert np.allclose(baselines[0].vector, normalize(BUSINESS))
    assert sum(baselines[0].vector) == pytest.approx(1.0)


def test_merge_day_is_the_same_mean_as_building_at_once():
    days = [BUSINESS, BUSINESS * 2, BUSINESS + NIGHT]
    online = None
    for v in days:
        online = merge_day(online, v)
    batch = build_baselines([(monday(i), v) for i, v in enumerate(days)])[0]
    assert online.days == batch.days == 3
    assert online.volume == pytest.approx(batch.volume)
    assert np.allclose(online.vector, batch.vector)
    assert merge_day(online, np.zeros(24)) is online


def test_stolen_key_same_volume_other_hours_is_fraud():
    verdict = check_day(NIGHT, baseline_of())
    assert verdict.similarity == 0.0
    assert verdict.volume_change_percent == 0.0
    assert verdict.kind == "pattern_shift" and verdict.is_fraud


def test_usual_day_is_not_fraud_and_no_baseline_is_similarity_one():
    verdict = check_day(BUSINESS * 1.2, baseline_of())
    assert verdict.similarity == pytest.approx(1.0) and verdict.kind is None and not verdict.is_fraud
    none = check_day(NIGHT, None)
    assert (none.similarity, none.is_fraud) == (1.0, False)


@pytest.mark.parametrize(
    "similarity, volume, kind",
    [(0.95, 1000, None), (0.5, 1400, "pattern_shift"), (0.5, 1600, "pattern_and_volume"), (0.95, 400, "volume_change"), (0.95, 1500, None)],
)
def test_classification_edges(similarity, volume, kind):
    assert classify_pattern(similarity, volume, 1000).kind == kind


def test_partial_day_flags_night_traffic_early_and_ignores_the_unlived_afternoon():
    baseline = baseline_of()
    night_so_far = NIGHT.copy()
    verdict = check_partial_day(night_so_far, hours_closed=4, baseline=baseline)
    assert verdict.similarity == 0.0 and verdict.kind == "pattern_shift" and verdict.is_fraud
    # A stolen key used on top of the usual volume is both.
    assert check_partial_day(NIGHT * 3, hours_closed=8, baseline=baseline).kind == "pattern_and_volume"
    # The usual shape with twice the whole day's volume by noon is a volume change.
    busy = BUSINESS * 5
    busy[12:] = 0
    assert check_partial_day(busy, hours_closed=12, baseline=baseline).kind == "volume_change"
    # A usual morning, judged at noon, is fine although the afternoon is still empty.
    morning = BUSINESS.copy()
    morning[12:] = 0
    assert check_partial_day(morning, hours_closed=12, baseline=baseline).kind is None
    # Nothing yet in quiet hours is no evidence.
    assert check_partial_day(np.zeros(24), hours_closed=5, baseline=baseline).kind is None


def test_zscore_and_severity():
    assert zscore(13, 10, 1) == 3
    assert zscore(10, 10, 0) == 0
    assert zscore(11, 10, 0) == math.inf
    assert severity(3.0) == "critical" and severity(-3.5) == "critical"
    assert severity(1.98) == "warning" and severity(1.97) == "normal"
    assert severity(2.0, threshold=2.0) == "critical"


def test_running_stats_match_numpy():
    values = [3.0, 7.0, 7.0, 19.0, 24.0]
    stats = RunningStats()
    for v in values:
        stats.add(v)
    assert stats.mean == pytest.approx(np.mean(values))
    assert stats.stddev == pytest.approx(np.std(values, ddof=1))
    assert describe([]) == (0.0, 0.0)
    assert describe([5]) == (5.0, 0.0)
