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
    assert days[0] == TODAY - timedelta(days=28) and days[-1] == TODAY - timedelta(days=3)
    assert len(days) == 26
    assert simulate.history_days(TODAY, 5) == [TODAY - timedelta(days=n) for n in (4, 3)]
    assert simulate.history_days(TODAY, 3) == []


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
        assert inside.size >= incident.events and incident.first_event_ms in inside
        if incident.kind == "fraud":
            # The usual office day is gone: all of the day's traffic is the attacker's night.
            assert inside.size == incident.events and incident.first_event_ms == inside.min()
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
    assert days == {TODAY - timedelta(days=n) for n in (4, 3)}
    fraud = simulate.scenario("fraud", profiles, now_ms, 7)
    yesterday = TODAY - timedelta(days=1)
    assert [i.end_ms for i in fraud.incidents] == [p.day_start_ms(yesterday) + DAY_MS for p in profiles]
    spike = simulate.scenario("spike", profiles, now_ms, 7, factor=5.0)
    assert {i.start_ms for i in spike.incidents} == {MIDNIGHT_MS + 11 * HOUR_MS}
    with pytest.raises(ValueError):
        simulate.scenario("history", profiles, now_ms, 7, days=3)


def test_too_many_victims_is_refused():
    with pytest.raises(ValueError):
        simulate.labelled_month(population(customers=4), TODAY, 7, fraud_share=0.5, spike_share=0.75)


# -- populations --------------------------------------------------------------------

ALL_BUT_LARGE = "office,247,batch,tiny,growth,holiday"


def mixed(text, customers=60, events_per_day=100.0, seed=7):
    return simulate.make_profiles(customers, seed, events_per_day, mix=simulate.parse_mix(text), today=TODAY)


def of(profiles, name):
    return [p for p in profiles if p.population == name]


def per_local_day(traffic, profile):
    """{local day: events} of one customer."""
    mine = traffic.timestamp[traffic.customer == traffic.customer_ids.index(profile.customer_id)]
    days, counts = np.unique([profile.local_day(int(t)) for t in mine], return_counts=True)
    return dict(zip(days, counts.tolist()))


def per_local_hour(traffic, profile):
    """Events per local hour of day (24) of one customer."""
    mine = traffic.timestamp[traffic.customer == traffic.customer_ids.index(profile.customer_id)]
    return np.bincount((mine // HOUR_MS + profile.utc_offset_h) % 24, minlength=24)


def test_a_mix_names_populations_and_weights_and_refuses_anything_else():
    assert simulate.parse_mix("office,247:2, large") == {"office": 1.0, "247": 2.0, "large": 0.05}
    for bad, reason in [("office,nightly", "unknown population 'nightly'"), ("tiny,tiny", "named twice"),
                        ("tiny:x", "not a number"), ("tiny:0", "positive"), ("tiny:-1", "positive"),
                        ("tiny:nan", "positive"), ("tiny:inf", "positive"), (" , ", "at least one")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            simulate.parse_mix(bad)


def test_a_mix_is_split_exactly_by_weight_and_the_seed_decides_who_is_what():
    profiles = mixed("office,247,batch,tiny,large,growth,holiday", customers=300)
    counts = {name: len(of(profiles, name)) for name in simulate.POPULATIONS}
    # 300 * 1/6.05 = 49.6 for each weight 1, 2.5 for large: floors, then the largest remainders.
    assert counts == {"office": 50, "247": 50, "batch": 50, "tiny": 50, "large": 2, "growth": 49, "holiday": 49}
    assert [p.population for p in profiles] != sorted(p.population for p in profiles)  # shuffled
    again = mixed("office,247,batch,tiny,large,growth,holiday", customers=300)
    assert again == profiles
    other = simulate.make_profiles(300, 8, 100.0, mix=simulate.parse_mix("office,247,batch,tiny,large,growth,holiday"),
                                   today=TODAY)  # fmt: skip
    assert [p.population for p in other] != [p.population for p in profiles]
    # No mix: office customers exactly as before populations existed.
    assert population(customers=5) == simulate.make_profiles(5, 7, 100.0, mix={"office": 1.0})
    assert {p.population for p in population(customers=5)} == {"office"}


def test_growing_customers_need_today():
    with pytest.raises(ValueError, match="today"):
        simulate.make_profiles(3, 7, 100.0, mix={"growth": 1.0})


def test_office_hours_peak_in_local_daytime_whatever_the_time_zone():
    profiles = of(mixed(ALL_BUT_LARGE, customers=120), "office")
    traffic = month_history(profiles)
    offsets = {p.utc_offset_h for p in profiles}
    assert min(offsets) < -4 and max(offsets) > 4  # both sides of UTC drawn
    assert set(offsets) <= set(range(-8, 11))
    for profile in profiles:
        hours = per_local_hour(traffic, profile)
        assert hours[:9].sum() == hours[17:].sum() == 0 and 9 <= int(np.argmax(hours)) < 17
        mine = traffic.timestamp[traffic.customer == profiles.index(profile)]
        utc = np.bincount((mine // HOUR_MS) % 24, minlength=24)
        assert utc[(9 - profile.utc_offset_h) % 24] > 0  # the same day, seen in UTC: shifted by the offset


def test_a_247_service_is_busy_every_hour_and_every_day():
    profiles = of(mixed(ALL_BUT_LARGE, customers=60, events_per_day=2000), "247")
    traffic = month_history(profiles)
    for profile in profiles:
        hours = per_local_hour(traffic, profile)
        assert hours.min() > 0
        assert 1.3 < hours.max() / hours.min() < 3  # flat-ish: 1.3/0.7 peak to trough
        assert 12 <= int(np.argmax(hours)) <= 16
        days = per_local_day(traffic, profile)
        weekend = np.mean([n for d, n in days.items() if d.weekday() >= 5])
        weekday = np.mean([n for d, n in days.items() if d.weekday() < 5])
        assert 0.75 < weekend / weekday < 1.05


def test_a_nightly_batch_is_heavy_for_a_few_local_night_hours_and_sometimes_runs_late():
    profiles = of(mixed(ALL_BUT_LARGE, customers=60, events_per_day=500), "batch")
    days = simulate.history_days(TODAY, 30)
    traffic = month_history(profiles)
    assert len(traffic.benign) == len(profiles)  # one late night each, labelled
    for profile, shifted in zip(profiles, traffic.benign):
        assert shifted.customer_id == profile.customer_id and shifted.kind == "batch_shift"
        job = slice(profile.batch_start_h, profile.batch_start_h + simulate.BATCH_HOURS)
        assert profile.batch_start_h in simulate.BATCH_STARTS_H
        late_day = profile.local_day(shifted.start_ms)
        assert days[simulate.FIRST_INCIDENT_DAY] <= late_day <= days[-1 - simulate.DAYS_AFTER_INCIDENT]
        mine = traffic.timestamp[traffic.customer == profiles.index(profile)]
        on_time = mine[np.array([profile.local_day(int(t)) != late_day for t in mine])]
        hours = np.bincount((on_time // HOUR_MS + profile.utc_offset_h) % 24, minlength=24)
        assert hours[job].sum() / hours.sum() == pytest.approx(simulate.BATCH_SHARE, abs=0.03)
        # The late night: its job hours are empty, the job ran 2-4 hours later, inside the label.
        that_day = mine[np.array([profile.local_day(int(t)) == late_day for t in mine])]
        late_hours = np.bincount((that_day // HOUR_MS + profile.utc_offset_h) % 24, minlength=24)
        start = profile.day_start_ms(late_day) + profile.batch_start_h * HOUR_MS
        assert shifted.start_ms == start
        shift = (shifted.end_ms - start) // HOUR_MS - simulate.BATCH_HOURS
        assert shift in simulate.BATCH_SHIFTS_H
        assert late_hours[job.start : job.start + shift].sum() == 0
        assert late_hours[job.start + shift : job.stop + shift].sum() > 0.9 * late_hours.sum() * simulate.BATCH_SHARE
        inside = that_day[(that_day >= shifted.start_ms) & (that_day < shifted.end_ms)]
        assert shifted.events == inside.size and shifted.first_event_ms == inside.min()
        assert inside.size > 0.6 * hours.sum() / (len(days) - 1)
        weekend = np.mean([n for d, n in per_local_day(traffic, profile).items() if d.weekday() >= 5])
        assert weekend > 0.8 * np.mean([n for d, n in per_local_day(traffic, profile).items() if d.weekday() < 5])


def test_tiny_customers_send_5_to_20_events_every_day():
    profiles = of(mixed(ALL_BUT_LARGE, customers=60), "tiny")
    days = simulate.history_days(TODAY, 30)
    traffic = month_history(profiles)
    seen = set()
    for profile in profiles:
        per_day = per_local_day(traffic, profile)
        assert set(per_day) == set(days)
        assert all(5 <= n <= 20 for n in per_day.values())
        seen |= set(per_day.values())
        assert profile.usual_volume(TODAY, simulate.TrafficShape()) == 12.5
    assert min(seen) <= 6 and max(seen) >= 19  # the whole range, not a constant


def test_large_customers_send_about_20k_events_a_weekday():
    (profile,) = of(mixed("office,large:1", customers=2), "large")
    days = simulate.history_days(TODAY, 7)  # D-6 .. D-3
    traffic = simulate.history([profile], days, 7)
    weekday = [n for d, n in per_local_day(traffic, profile).items() if d.weekday() < 5]
    assert len(weekday) >= 2
    assert all(10_000 < n < 40_000 for n in weekday)
    hours = per_local_hour(traffic, profile)
    outside = (hours[:9].sum() + hours[17:].sum()) / hours.sum()
    assert outside == pytest.approx(simulate.LARGE_BACKGROUND_SHARE, abs=0.02)


def test_growing_customers_grow_2_to_4_percent_a_day():
    profiles = of(mixed(ALL_BUT_LARGE, customers=60, events_per_day=1000), "growth")
    days = simulate.history_days(TODAY, 30)
    traffic = month_history(profiles)
    for profile in profiles:
        assert 0.02 <= profile.growth_per_day <= 0.04
        assert profile.growth_start == days[0]  # D-28: the first day of the longest history
        per_day = per_local_day(traffic, profile)
        first, last = sum(per_day[d] for d in days[:7]), sum(per_day[d] for d in days[-7:])
        expected = (1 + profile.growth_per_day) ** (days[-7] - days[0]).days
        assert last / first == pytest.approx(expected, rel=0.15)
    # A fraud the next days steals the grown volume: history and fraud agree.
    growing = profiles[0]
    fraud = simulate.fraud([growing], TODAY - timedelta(days=1), 7)
    expected = growing.daily_volume * (1 + growing.growth_per_day) ** 27
    assert fraud.incidents[0].events == pytest.approx(expected, rel=0.3)


def test_a_holiday_is_one_quiet_weekday_labelled_benign():
    profiles = of(mixed(ALL_BUT_LARGE, customers=60, events_per_day=500), "holiday")
    days = simulate.history_days(TODAY, 30)
    traffic = month_history(profiles)
    assert [h.customer_id for h in traffic.benign] == [p.customer_id for p in profiles]
    for profile, holiday in zip(profiles, traffic.benign):
        day = profile.local_day(holiday.start_ms)
        assert holiday.kind == "holiday" and day.weekday() < 5
        assert (holiday.start_ms, holiday.end_ms) == (profile.day_start_ms(day), profile.day_start_ms(day) + DAY_MS)
        assert days[simulate.FIRST_INCIDENT_DAY] <= day <= days[-1 - simulate.DAYS_AFTER_INCIDENT]
        per_day = per_local_day(traffic, profile)
        weekdays = [n for d, n in per_day.items() if d.weekday() < 5 and d != day]
        assert per_day.get(day, 0) == holiday.events < 0.35 * min(weekdays)
        assert per_day.get(day, 0) == pytest.approx(simulate.HOLIDAY_FACTOR * np.mean(weekdays), rel=0.4)
    assert month_history(of(mixed(ALL_BUT_LARGE), "office")).benign == ()


@pytest.mark.parametrize("now_ms", NOWS)
def test_every_populations_fraud_sits_in_local_night_after_the_history_days(now_ms):
    profiles = mixed(ALL_BUT_LARGE + ",large:0.5", customers=30, events_per_day=200)
    assert {p.population for p in profiles} == set(simulate.POPULATIONS)
    today = simulate.utc_today(now_ms)
    history = simulate.scenario("history", profiles, now_ms, 7)
    fraud = simulate.scenario("fraud", profiles, now_ms, 7)
    shape = simulate.TrafficShape()
    for profile, incident in zip(profiles, fraud.incidents):
        index = profiles.index(profile)
        mine = fraud.timestamp[fraud.customer == index]
        hours = (mine // HOUR_MS + profile.utc_offset_h) % 24
        assert np.all((hours >= 21) | (hours < 5)), profile.population
        assert incident.events == mine.size == pytest.approx(
            profile.usual_volume(simulate.fraud_day(now_ms), shape), rel=0.5, abs=8
        )
        # Nothing of the stolen night falls on a day of the history, nor before its last event.
        history_days = {profile.local_day(int(t)) for t in history.timestamp[history.customer == index]}
        assert not history_days & {profile.local_day(int(t)) for t in mine}
        assert history.timestamp[history.customer == index].max() < incident.start_ms <= mine.min()
        assert mine.max() < now_ms
    assert not set(history.timestamp.tolist()) & set(fraud.timestamp.tolist())
    assert today - timedelta(days=simulate.NEWEST_DAY) == max(simulate.history_days(today, 30))


@pytest.mark.parametrize("now_ms", NOWS)
def test_every_population_passes_validation_at_any_time_of_day(now_ms):
    profiles = mixed(ALL_BUT_LARGE, customers=14, events_per_day=30) + extremes(events_per_day=30)
    today = simulate.utc_today(now_ms)
    scenarios = [
        simulate.labelled_month(profiles, today, 7, spike_factor=(5.0, 20.0)),
        simulate.scenario("fraud", profiles, now_ms, 7),
        simulate.scenario("spike", profiles, now_ms, 7),
    ]
    for traffic in scenarios:
        for event in traffic.events():
            validate_event(event, now_ms)
    large = mixed("large", customers=1)
    month = simulate.labelled_month(large, today, 7)
    assert month.timestamp.min() >= now_ms - 30 * DAY_MS and month.timestamp.max() < now_ms


def test_the_labelled_month_gives_every_population_its_frauds_spikes_and_look_alikes():
    profiles = mixed(ALL_BUT_LARGE, customers=120, events_per_day=50)
    month = simulate.labelled_month(profiles, TODAY, 7, fraud_share=0.1, spike_share=0.1, spike_factor=(5.0, 20.0))
    days = simulate.history_days(TODAY, 30)
    by_id = {p.customer_id: p for p in profiles}
    shape = simulate.TrafficShape()
    for name in ALL_BUT_LARGE.split(","):
        mine = {p.customer_id for p in of(profiles, name)}
        kinds = [i.kind for i in month.incidents if i.customer_id in mine]
        assert kinds.count("fraud") == kinds.count("spike") == 2, name  # 10 % of 20, each
    for incident in month.incidents:
        profile = by_id[incident.customer_id]
        index = profiles.index(profile)
        mine = month.timestamp[month.customer == index]
        if incident.kind == "spike":
            # 5-20x the busy hour, in an hour the customer usually works, on top of it.
            day = profile.local_day(incident.start_ms)
            hour = (incident.start_ms // HOUR_MS + profile.utc_offset_h) % 24
            assert hour in profile.active_hours(shape)
            assert incident.events >= 3 * profile.busy_hour_volume(day, shape)
            assert incident.events <= 30 * profile.busy_hour_volume(day, shape) + 20
        else:
            night = mine[(mine >= incident.start_ms) & (mine < incident.end_ms)]
            hours = (night // HOUR_MS + profile.utc_offset_h) % 24
            assert np.all((hours >= 21) | (hours < 5)), profile.population
    factors = [i.events / by_id[i.customer_id].busy_hour_volume(by_id[i.customer_id].local_day(i.start_ms), shape)
               for i in month.incidents if i.kind == "spike" and by_id[i.customer_id].population != "tiny"]  # fmt: skip
    assert min(factors) < 10 < max(factors)  # drawn over the range, not one factor
    incident_days = {i.customer_id: by_id[i.customer_id].local_day(i.end_ms - 1) for i in month.incidents}
    assert {b.kind for b in month.benign} == {"holiday", "batch_shift"}
    for look_alike in month.benign:
        profile = by_id[look_alike.customer_id]
        day = profile.local_day(look_alike.start_ms)
        assert days[simulate.FIRST_INCIDENT_DAY] <= day <= days[-1 - simulate.DAYS_AFTER_INCIDENT]
        if look_alike.customer_id in incident_days:  # never on the incident's day or next to it
            assert abs((day - incident_days[look_alike.customer_id]).days) > 1


def test_a_population_too_small_for_both_incidents_gets_a_fraud_only():
    profiles = mixed("office:10,large:1", customers=11, events_per_day=20)
    assert len(of(profiles, "large")) == 1
    large = simulate.labelled_month(of(profiles, "large"), TODAY, 7)
    assert [i.kind for i in large.incidents] == ["fraud"]


def test_the_cli_refuses_an_unknown_population_with_the_reason(capsys):
    from meterflow.cli import simulate_parser

    with pytest.raises(SystemExit) as exit_info:
        simulate_parser().parse_args(["history", "--populations", "office,nightly"])
    assert exit_info.value.code == 2
    assert "unknown population 'nightly'" in capsys.readouterr().err
    args = simulate_parser().parse_args(["fraud", "--populations", "batch:2,tiny"])
    assert args.populations == {"batch": 2.0, "tiny": 1.0}
    assert simulate_parser().parse_args(["spike"]).populations == {"office": 1.0}
