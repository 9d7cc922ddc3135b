"""The traffic generator of `meterflow simulate` and benchmarks/detection.py, without services."""

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from meterflow import simulate
from meterflow.simulate import DAY_MS, HOUR_MS, CustomerProfile
from operators.events import validate_event

TODAY = date(2026, 10, 15)  # a Thursday
MIDNIGHT_MS = int(datetime(2026, 10, 15, tzinfo=timezone.utc).timestamp() * 1000)
# The earliest, a middle and the latest "now" of TODAY: validity must hold at all of them.
NOWS = [MIDNIGHT_MS + 1000, MIDNIGHT_MS + 12 * HOUR_MS, MIDNIGHT_MS + DAY_MS - 1000]


def population(customers=40, events_per_day=100.0, seed=7):
    return simulate.make_profiles(customers, seed, events_per_day)


def extremes(events_per_day=100.0):
    """Customers at both ends of the offsets the generator uses."""
    return [
        CustomerProfile(f"edge-{i}", 100 + i, offset, events_per_day)
        for i, offset in enumerate((min(simulate.UTC_OFFSETS_H), 0, max(simulate.UTC_OFFSETS_H)))
    ]


def month_history(profiles, seed=7):
    return simulate.history(profiles, simulate.history_days(TODAY, 30), seed)


def local_hours(traffic, profiles):
    offsets = np.array([p.utc_offset_h for p in profiles])[traffic.customer]
    return ((traffic.timestamp // HOUR_MS) + offsets) % 24


def test_history_covers_the_days_that_stay_valid():
    days = simulate.history_days(TODAY, 30)
    assert days[0] == TODAY - timedelta(days=28) and days[-1] == TODAY - timedelta(days=2)
    assert len(days) == 27
    assert simulate.history_days(TODAY, 5) == [TODAY - timedelta(days=n) for n in (4, 3, 2)]
    assert simulate.history_days(TODAY, 2) == []


def test_business_hours_dominate_in_each_customers_own_time_zone():
    profiles = population()
    traffic = month_history(profiles)
    hours = local_hours(traffic, profiles)
    assert np.all((hours >= 9) & (hours < 17))
    # ... which is spread over many UTC hours, since offsets differ.
    assert len(np.unique((traffic.timestamp // HOUR_MS) % 24)) == 24


def test_a_background_share_puts_that_share_outside_office_hours():
    profiles = population()
    shape = simulate.TrafficShape(background_share=0.05)
    traffic = simulate.history(profiles, simulate.history_days(TODAY, 30), 7, shape=shape)
    hours = local_hours(traffic, profiles)
    outside = np.mean((hours < 9) | (hours >= 17))
    assert 0.04 < outside < 0.06


def test_weekends_are_lighter_and_volumes_follow_each_customers_daily_volume():
    profiles = population(customers=5, events_per_day=500)
    days = simulate.history_days(TODAY, 30)
    traffic = simulate.history(profiles, days, 7)
    counts = traffic.counts()
    for profile in profiles:
        per_day = {day: 0 for day in days}
        for timestamp in traffic.timestamp[traffic.customer == profile.number - 1]:
            per_day[profile.local_day(int(timestamp))] += 1
        weekday = [n for day, n in per_day.items() if day.weekday() < 5]
        weekend = [n for day, n in per_day.items() if day.weekday() >= 5]
        assert np.mean(weekend) < 0.5 * np.mean(weekday)
        expected = sum(profile.usual_volume(day, simulate.TrafficShape()) for day in days)
        assert counts[profile.customer_id] == pytest.approx(expected, rel=0.1)
    volumes = [p.daily_volume for p in population(customers=200)]
    assert 70 < np.median(volumes) < 140  # log-normal around events_per_day=100


def test_same_seed_same_traffic_and_ids_other_seed_other_traffic():
    first, again = month_history(population()), month_history(population())
    assert np.array_equal(first.timestamp, again.timestamp)
    assert list(first.events(range(50))) == list(again.events(range(50)))
    other = month_history(population(seed=8), seed=8)
    assert len(other) != len(first) or not np.array_equal(other.timestamp, first.timestamp)
    assert other.event(0)["transaction_id"] != first.event(0)["transaction_id"]


def test_a_customer_is_the_same_whoever_else_is_simulated():
    small, large = month_history(population(customers=2)), month_history(population(customers=9))
    def events_of(traffic):
        return [e for e in traffic.events() if e["customer_id"] == "sim-0002"]
    assert events_of(small) == events_of(large) != []


def test_transaction_ids_are_unique_and_other_scenarios_get_other_ids():
    profiles = population(customers=10)
    history = month_history(profiles)
    fraud = simulate.fraud(profiles, TODAY - timedelta(days=1), 7)
    ids = [e["transaction_id"] for t in (history, fraud) for e in t.events()]
    assert len(ids) == len(set(ids))
    assert history.event(0)["transaction_id"].startswith(history.event(0)["customer_id"] + "-h")


@pytest.mark.parametrize("now_ms", NOWS)
def test_every_timestamp_passes_validation_at_any_time_of_day(now_ms):
    profiles = population() + extremes()
    today = simulate.utc_today(now_ms)
    scenarios = [
        simulate.history(profiles, simulate.history_days(today, 30), 7),
        simulate.fraud(profiles, simulate.fraud_day(now_ms), 7),
        simulate.spike(profiles, simulate.last_full_hour(now_ms), 20.0, 7),
        simulate.labelled_month(profiles, today, 7),
    ]
    for traffic in scenarios:
        assert len(traffic) > 0
        for event in traffic.events():
            validate_event(event, now_ms)  # raises InvalidEvent with the reason
        assert traffic.timestamp.max() < now_ms


def test_a_stolen_key_moves_a_usual_day_into_the_local_night():
    profiles = population(customers=20, events_per_day=400)
    day = TODAY - timedelta(days=1)  # a Wednesday
    traffic = simulate.fraud(profiles, day, 7)
    hours = local_hours(traffic, profiles)
    assert np.all((hours >= 21) | (hours < 5))
    shape = simulate.TrafficShape()
    for incident, profile in zip(traffic.incidents, profiles):
        assert incident.kind == "fraud" and incident.customer_id == profile.customer_id
        assert incident.events == traffic.counts()[profile.customer_id]
        assert incident.events == pytest.approx(profile.usual_volume(day, shape), rel=0.35)
        assert incident.start_ms == profile.day_start_ms(day) - 3 * HOUR_MS  # 21:00 the evening before
        assert incident.end_ms == profile.day_start_ms(day) + DAY_MS
        mine = traffic.timestamp[traffic.customer == profile.number - 1]
        assert incident.first_event_ms == mine.min() >= incident.start_ms


def test_a_spike_puts_many_busy_hours_into_one_clock_hour():
    profiles = population(customers=10)
    hour = simulate.last_full_hour(NOWS[1])
    traffic = simulate.spike(profiles, hour, 20.0, 7)
    assert np.all((traffic.timestamp >= hour) & (traffic.timestamp < hour + HOUR_MS))
    for incident, profile in zip(traffic.incidents, profiles):
        usual = profile.busy_hour_volume(TODAY, simulate.TrafficShape())
        assert incident.events == pytest.approx(20 * usual, rel=0.3)
        assert (incident.start_ms, incident.end_ms) == (hour, hour + HOUR_MS)


def test_the_labelled_month_injects_incidents_on_known_customers_and_days():
    profiles = population(customers=50)
    month = simulate.labelled_month(profiles, TODAY, 7, fraud_share=0.1, spike_share=0.2)
    kinds = [i.kind for i in month.incidents]
    assert kinds.count("fraud") == 5 and kinds.count("spike") == 10
    victims = [i.customer_id for i in month.incidents]
    assert len(set(victims)) == len(victims)  # one incident per customer at most
    days = simulate.history_days(TODAY, 30)
    by_id = {p.customer_id: p for p in profiles}
    for incident in month.incidents:
        profile = by_id[incident.customer_id]
        mine = month.timestamp[month.customer == profile.number - 1]
        inside = mine[(mine >= incident.start_ms) & (mine < incident.end_ms)]
        local_day = profile.local_day(incident.end_ms - 1)
        # Two weeks of history before, two ordinary days after.
        assert days[simulate.FIRST_INCIDENT_DAY] <= local_day <= days[-1 - simulate.DAYS_AFTER_INCIDENT]
        assert inside.size >= incident.events and incident.first_event_ms == inside.min()
        if incident.kind == "fraud":
            # The usual office day is gone: all of the day's traffic is the attacker's night.
            assert inside.size == incident.events
            assert np.all((inside - incident.start_ms) < 8 * HOUR_MS)
        else:
            assert incident.end_ms - incident.start_ms == HOUR_MS
    untouched = set(by_id) - set(victims)
    quiet = month_history([by_id[c] for c in sorted(untouched)][:3])
    assert quiet.counts() == {c: month.counts()[c] for c in sorted(untouched)[:3]}


def test_the_cli_scenarios_use_the_documented_days_and_hour():
    profiles = population(customers=3)
    now_ms = NOWS[1]
    history = simulate.scenario("history", profiles, now_ms, 7, days=5)
    days = {profiles[c].local_day(int(t)) for c, t in zip(history.customer, history.timestamp)}
    assert days == {TODAY - timedelta(days=n) for n in (4, 3, 2)}
    fraud = simulate.scenario("fraud", profiles, now_ms, 7)
    yesterday = TODAY - timedelta(days=1)
    assert [i.end_ms for i in fraud.incidents] == [p.day_start_ms(yesterday) + DAY_MS for p in profiles]
    spike = simulate.scenario("spike", profiles, now_ms, 7, factor=5.0)
    assert {i.start_ms for i in spike.incidents} == {MIDNIGHT_MS + 11 * HOUR_MS}
    with pytest.raises(ValueError):
        simulate.scenario("history", profiles, now_ms, 7, days=2)


def test_too_many_victims_is_refused():
    with pytest.raises(ValueError):
        simulate.labelled_month(population(customers=4), TODAY, 7, fraud_share=0.5, spike_share=0.75)
