"""The streaming detector driven directly, without Bytewax or services."""

import copy
import pickle
from datetime import datetime, timezone

from flows.detectors import DAY_MS, HOUR_MS, DetectorConfig, Observation, UsageDetector, hourly_observations
from operators.events import UsageEvent

START_DAY = int(datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp() * 1000) // DAY_MS  # a Thursday


def feed(detector, day, hours, per_hour=10, value=1.0):
    """`per_hour` events spread over each of `hours` of `day`; returns the alerts."""
    alerts = []
    for hour in hours:
        for i in range(per_hour):
            ts = day * DAY_MS + hour * HOUR_MS + i * (HOUR_MS // per_hour)
            alerts += detector.observe(ts, value, now_ms=ts)
    return alerts


def business_history(detector, days=21):
    alerts = []
    for d in range(days):
        alerts += feed(detector, START_DAY + d, range(9, 17))
    return alerts


def test_a_steady_business_history_raises_nothing_and_learns_baselines():
    detector = UsageDetector("acme", "api_calls")
    assert business_history(detector) == []
    assert len(detector.baselines) == 7
    assert sum(b.days for b in detector.baselines.values()) == 20  # the last day is still open
    assert detector.baselines[0].volume == 80
    assert detector.day_stats.count == 20


def test_stolen_key_at_night_with_the_same_volume_is_caught_within_hours():
    detector = UsageDetector("acme", "api_calls")
    business_history(detector)
    fraud_day = START_DAY + 21
    alerts = feed(detector, fraud_day, range(0, 8))  # 80 calls at night, as many as a usual day
    patterns = [a for a in alerts if a.kind == "fraud_pattern"]
    assert patterns, alerts
    first = patterns[0]
    assert first.severity == "critical" and first.score < 0.9
    assert first.evidence["hours_observed"] <= 3  # evidence after 8 calls (10 % of 80) at most two hours in
    assert first.window_start == fraud_day * DAY_MS
    assert len(patterns) == 1  # fires once per day, not on every later check


def test_spike_of_an_hour_is_a_critical_usage_spike_before_the_hour_ends():
    detector = UsageDetector("acme", "api_calls")
    business_history(detector)
    day = START_DAY + 21
    alerts = feed(detector, day, [9], per_hour=200)
    spikes = [a for a in alerts if a.kind == "usage_spike"]
    assert spikes and spikes[0].severity in ("warning", "critical")
    assert any(a.severity == "critical" for a in spikes)
    assert all(a.evidence["hour"] == 9 for a in spikes)
    assert spikes[0].evidence["partial"] is True


def test_daily_anomaly_fires_when_the_day_closes():
    detector = UsageDetector("acme", "bandwidth")
    business_history(detector)
    day = START_DAY + 21
    feed(detector, day, range(9, 17), value=5.0)  # five times the usual volume, same shape
    alerts = feed(detector, day + 1, [9], per_hour=1)
    daily = [a for a in alerts if a.kind == "daily_anomaly"]
    assert len(daily) == 1 and daily[0].severity == "critical" and daily[0].window_start == day * DAY_MS


def test_late_events_of_closed_days_are_ignored_and_state_pickles():
    detector = UsageDetector("acme", "api_calls")
    feed(detector, START_DAY + 1, [10])
    assert detector.observe(START_DAY * DAY_MS, 1.0, now_ms=0) == []
    assert detector.late_events == 1
    restored = pickle.loads(pickle.dumps(detector))
    assert restored == detector


def test_a_snapshot_copy_is_equal_and_independent():
    detector = UsageDetector("acme", "api_calls")
    business_history(detector)
    hours, samples = list(detector.hours), detector.hour_stats[9].count
    copied = copy.deepcopy(detector)
    assert copied == detector and len(copied.baselines) == 7
    feed(detector, START_DAY + 21, [9, 10])
    assert copied != detector
    assert copied.hours == hours and copied.hour_stats[9].count == samples


def test_a_snapshot_of_the_older_state_form_still_restores():
    """Snapshots taken before the compact state pickled the plain `__dict__`."""
    detector = UsageDetector("acme", "api_calls")
    business_history(detector, days=8)
    restored = UsageDetector.__new__(UsageDetector)
    restored.__setstate__(dict(vars(detector)))
    assert restored == detector


def test_max_metrics_combine_by_max():
    detector = UsageDetector("acme", "storage_peak", combine="max", config=DetectorConfig())
    for v in (3.0, 9.0, 4.0):
        detector.observe(START_DAY * DAY_MS + 10 * HOUR_MS, v, now_ms=0)
    assert detector.hours[10] == 9.0


def test_alert_ids_are_stable_per_window():
    a = UsageDetector("acme", "api_calls")
    b = UsageDetector("acme", "api_calls")
    for detector in (a, b):
        business_history(detector)
    ids_a = [x.alert_id for x in feed(a, START_DAY + 21, range(0, 8))]
    ids_b = [x.alert_id for x in feed(b, START_DAY + 21, range(0, 8))]
    assert ids_a == ids_b and ids_a


def test_a_batch_folds_into_one_observation_per_customer_metric_and_hour():
    base = START_DAY * DAY_MS
    events = [
        UsageEvent("t1", "acme", "api_request", base + 2 * HOUR_MS + 10, {"bytes": 5}),
        UsageEvent("t2", "acme", "storage", base + HOUR_MS + 20, {"gb_stored": 7}),
        UsageEvent("t3", "acme", "api_request", base + 2 * HOUR_MS + 30, {"bytes": "6"}),
        UsageEvent("t4", "acme", "storage", base + HOUR_MS + 10, {"gb_stored": 9}),
        UsageEvent("t5", "zeta", "api_request", base + HOUR_MS, {}),
    ]
    observations = hourly_observations(events)
    assert observations == [
        Observation("acme", "storage_peak", base + HOUR_MS + 20, 9.0, 2),  # MAX takes the peak
        Observation("zeta", "api_calls", base + HOUR_MS, 1.0, 1),  # no bytes: counted, no bandwidth
        Observation("acme", "api_calls", base + 2 * HOUR_MS + 30, 2.0, 2),
        Observation("acme", "bandwidth", base + 2 * HOUR_MS + 30, 11.0, 2),
    ]
    assert observations[0].key == "acme/storage_peak"


def test_a_noisy_ordinary_day_is_not_fraud_but_a_moved_one_is():
    """Ten calls an hour with Poisson noise: the day's cosine similarity to
    its baseline can dip below 0.9 by chance, which must not page anyone;
    the same volume moved to the night must."""
    import numpy as np

    rng = np.random.default_rng(7)
    detector = UsageDetector("acme", "api_calls")
    false_alarms = []
    for d in range(60):
        for hour in range(9, 17):
            for _ in range(rng.poisson(10)):
                ts = (START_DAY + d) * DAY_MS + hour * HOUR_MS + int(rng.integers(HOUR_MS))
                false_alarms += [a for a in detector.observe(ts, 1.0, ts) if a.kind == "fraud_pattern"]
    assert false_alarms == []
    night = feed(detector, START_DAY + 60, range(0, 8))
    assert [a.evidence["pattern"] for a in night if a.kind == "fraud_pattern"] == ["pattern_shift"]
