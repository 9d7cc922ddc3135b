"""The on-demand detection endpoints against the running API and real services.

Each test posts a known history through POST /v1/events and checks every
number the API answers against numpy on the generated data, following the
rules of the contract and docs/api.md (not the code under test).
"""

from __future__ import annotations

import math
import time
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from operators.baselines import load_baselines
from tests.integration.conftest import Customer, make_event, stored_count, wait_for

HOUR = 3_600_000
DAY = 24 * HOUR
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
APPROX = {"rel": 1e-9, "abs": 1e-12}


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


def day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def post_events(api, customer: Customer, clickhouse, settings, events: list[dict]) -> None:
    """Ingest `events` and wait until all the customer's events are stored."""
    already = stored_count(clickhouse, settings, customer.customer_id)
    for i in range(0, len(events), 1000):
        batch = events[i : i + 1000]
        response = api.post("/v1/events", json={"events": batch}, headers=customer.headers)
        assert response.status_code == 200 and response.json()["accepted"] == len(batch), response.text
    total = already + len(events)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == total, 60, f"{total} rows")


def calls(customer_id: str, timestamps) -> list[dict]:
    return [make_event(customer_id, timestamp=int(t), properties={}) for t in timestamps]


def contract_severity(z: float, threshold: float) -> str:
    if abs(z) >= threshold:
        return "critical"
    return "warning" if abs(z) >= 0.66 * threshold else "normal"


def expected_volume(value: float, daily: list[float], threshold: float) -> dict:
    """The contract's Z-score of `value` against daily values (0 = no usage),
    sampled from the first day with usage on, two samples at least."""
    active = [i for i, v in enumerate(daily) if v > 0]
    samples = np.array(daily[active[0] :] if active else [], dtype=float)
    mean = float(samples.mean()) if len(samples) else 0.0
    stddev = float(samples.std(ddof=1)) if len(samples) >= 2 else 0.0
    if len(samples) < 2 or value == mean:
        z = 0.0
    elif stddev == 0:
        z = math.copysign(math.inf, value - mean)
    else:
        z = (value - mean) / stddev
    return {"mean": mean, "stddev": stddev, "sample_count": len(samples), "z": z,
            "severity": contract_severity(z, threshold)}  # fmt: skip


def wait_out(period_s: int, margin_s: float = 180) -> None:
    """Tests that involve today (or its hour in progress) do not start in the
    last minutes of it, so the API sees the day and hour they generated for."""
    left = period_s - time.time() % period_s
    if left < margin_s:
        time.sleep(left + 1)


# -- GET /v1/anomalies/check -----------------------------------------------------


def test_anomaly_check_z_scores_and_severities(api, customer, clickhouse, settings):
    c = utc_today() - timedelta(days=1)  # the day under test, C
    # 14 days before C: the first three without usage (not samples), one in
    # between without usage (a sample of 0), the last two equal.
    counts = [0, 0, 0, 10, 12, 9, 11, 0, 10, 13, 8, 11, 12, 12]
    timestamps = [
        day_ms(c - timedelta(days=14 - i)) + HOUR + k * (22 * HOUR // n) for i, n in enumerate(counts) for k in range(n)
    ]
    timestamps += [day_ms(c) + hour * HOUR + k * 60_000 for hour in (1, 20) for k in range(15)]
    post_events(api, customer, clickhouse, settings, calls(customer.customer_id, timestamps))
    ts = np.array(timestamps)

    def check(start: int, end: int, baseline_days: int, threshold: float) -> tuple[dict, dict]:
        params = {"customer_id": customer.customer_id, "metric": "api_calls", "current_start": start,
                  "current_end": end, "baseline_days": baseline_days, "threshold": threshold}  # fmt: skip
        response = api.get("/v1/anomalies/check", params=params, headers=customer.headers)
        assert response.status_code == 200, response.text
        origin = start - baseline_days * DAY
        daily = [float(((ts >= origin + i * DAY) & (ts < origin + (i + 1) * DAY)).sum()) for i in range(baseline_days)]
        value = float(((ts >= start) & (ts <= end)).sum())
        return response.json(), {"value": value, **expected_volume(value, daily, threshold)}

    start = day_ms(c)
    cases = [
        (start, start + DAY - 1, 14, 3.0),  # 30 calls against ~10 a day
        (start, start + 2 * HOUR - 1, 14, 3.0),  # the 15 calls of 01:00
        (start, start + 2 * HOUR - 1, 14, 2.0),
        (start, start + 2 * HOUR - 1, 14, 1.4),
        (start, start + DAY - 1, 2, 3.0),  # two equal days: no spread
        (start, start + DAY - 1, 1, 3.0),  # one sample: no spread can be measured
        (day_ms(c - timedelta(days=14)), start - 13 * DAY - 1, 14, 3.0),  # no history at all
        (start + 12 * HOUR, start + 36 * HOUR - 1, 14, 3.0),  # windows aligned to current_start, not midnight
    ]
    seen = set()
    for case in cases:
        got, want = check(*case)
        assert got == {
            "customer_id": customer.customer_id,
            "metric": "api_calls",
            "period": {"start": case[0], "end": case[1]},
            "current_value": want["value"],
            "baseline": {"mean": pytest.approx(want["mean"], **APPROX),
                         "stddev": pytest.approx(want["stddev"], **APPROX), "sample_count": want["sample_count"]},
            "z_score": pytest.approx(want["z"], **APPROX) if math.isfinite(want["z"]) else None,
            "is_anomaly": want["severity"] == "critical",
            "severity": want["severity"],
            "unit": "calls",
        }, case  # fmt: skip
        seen.add(want["severity"])
    assert seen == {"normal", "warning", "critical"}  # the cases cover every severity
    no_spread, one_sample, no_history = (check(*case)[0] for case in cases[4:7])
    assert (no_spread["baseline"], no_spread["z_score"], no_spread["is_anomaly"]) == (
        {"mean": 12, "stddev": 0, "sample_count": 2}, None, True)  # fmt: skip
    assert (one_sample["baseline"]["sample_count"], one_sample["z_score"], one_sample["severity"]) == (1, 0, "normal")
    assert (no_history["baseline"], no_history["current_value"]) == ({"mean": 0, "stddev": 0, "sample_count": 0}, 0)
    full_day = check(*cases[0])[0]
    assert full_day["baseline"]["sample_count"] == 11  # from the first day with usage, the empty day as 0


# -- weekday baselines, pattern checks and the dashboard ---------------------------

USUAL_HOURS = range(9, 17)
NIGHT_HOURS = range(2, 10)


def usual_day(seed: int) -> np.ndarray:
    v = np.zeros(24)
    for hour in USUAL_HOURS:
        v[hour] = 2 + (seed + hour) % 3
    return v


def hourly_events(customer_id: str, day: date, vector: np.ndarray) -> list[dict]:
    start = day_ms(day)
    return calls(customer_id, [start + h * HOUR + k * 60_000 for h, n in enumerate(vector) for k in range(int(n))])


def normalized(v: np.ndarray) -> np.ndarray:
    return v / v.sum()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def history(api, clickhouse, settings):
    """One customer's api_calls: usual 09:00-17:00 days from 14 to 3 days ago
    (12 and 9 days ago empty), baselines built over 14 days; then a stolen
    key's night at the usual volume yesterday, traffic 2 days ago (a weekday
    with no baseline: both its days in the window were empty), twice the
    usual volume in the usual hours 12 days ago, and a few calls in the hour
    in progress today."""
    wait_out(3600)
    response = api.post("/v1/admin/keys", json={"customer_id": f"cust-det-{time.time_ns()}", "name": "test"})
    assert response.status_code == 201, response.text
    customer = Customer(response.json()["customer_id"], response.json()["api_key"])
    today = utc_today()
    days = {today - timedelta(days=n): usual_day(n) for n in range(14, 2, -1) if n not in (12, 9)}
    events = [e for day, v in days.items() for e in hourly_events(customer.customer_id, day, v)]
    post_events(api, customer, clickhouse, settings, events)

    build = api.post("/v1/fraud/baselines/build", json={"customer_id": customer.customer_id, "metric": "api_calls",
                                                       "days": 14}, headers=customer.headers)  # fmt: skip
    learned = dict(days)

    night = np.zeros(24)
    night[list(NIGHT_HOURS)] = days[today - timedelta(days=8)][list(USUAL_HOURS)]  # same volume, other hours
    days[today - timedelta(days=1)] = night
    days[today - timedelta(days=2)] = np.eye(24)[12] * 20
    days[today - timedelta(days=12)] = days[today - timedelta(days=5)] * 2  # its weekday's only baseline day
    now = int(time.time() * 1000)
    hour = (now - day_ms(today)) // HOUR
    days[today] = np.eye(24)[hour] * 3
    later = [e for n in (12, 2, 1) for e in hourly_events(customer.customer_id, today - timedelta(days=n),
                                                          days[today - timedelta(days=n)])]
    hour_start = day_ms(today) + hour * HOUR
    later += calls(customer.customer_id, [hour_start + k * (now - hour_start) // 4 for k in (1, 2, 3)])
    post_events(api, customer, clickhouse, settings, later)
    return {"customer": customer, "today": today, "hour": hour, "days": days, "learned": learned, "build": build}


def expected_baselines(learned: dict[date, np.ndarray]) -> dict[int, tuple[np.ndarray, float, int]]:
    by_weekday: dict[int, list[np.ndarray]] = {}
    for day, v in learned.items():
        by_weekday.setdefault(day.weekday(), []).append(v)
    return {
        wd: (np.mean([normalized(v) for v in vs], axis=0), float(np.mean([v.sum() for v in vs])), len(vs))
        for wd, vs in by_weekday.items()
    }


def test_baselines_are_built_per_weekday_and_stored_for_the_dataflow(history, redis):
    customer, today = history["customer"], history["today"]
    expected = expected_baselines(history["learned"])
    assert len(expected) == 6 and (today - timedelta(days=2)).weekday() not in expected
    assert history["build"].status_code == 200, history["build"].text
    assert history["build"].json() == {
        "customer_id": customer.customer_id,
        "metric": "api_calls",
        "days_processed": 10,
        "weekdays_built": [WEEKDAYS[wd] for wd in sorted(expected)],
    }
    stored = load_baselines(redis, customer.customer_id, "api_calls")
    assert set(stored) == set(expected)
    for weekday, (vector, volume, days) in expected.items():
        assert np.allclose(stored[weekday].vector, vector, rtol=1e-12, atol=1e-15)
        assert (stored[weekday].volume, stored[weekday].days) == (pytest.approx(volume, **APPROX), days)


def fraud_check(api, history, day: date) -> dict:
    customer = history["customer"]
    params = {"customer_id": customer.customer_id, "metric": "api_calls", "date": day.isoformat()}
    response = api.get("/v1/fraud/check", params=params, headers=customer.headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_fraud_check_flags_night_traffic_at_the_usual_volume(api, history):
    today, days = history["today"], history["days"]
    yesterday = today - timedelta(days=1)
    vector, volume, _ = expected_baselines(history["learned"])[yesterday.weekday()]
    night = days[yesterday]
    got = fraud_check(api, history, yesterday)
    similarity = cos(normalized(night), vector)
    assert similarity < 0.9
    assert got == {
        "customer_id": history["customer"].customer_id,
        "metric": "api_calls",
        "date": yesterday.isoformat(),
        "similarity": pytest.approx(similarity, **APPROX),
        "volume_change_percent": 0.0,
        "is_fraud": True,
        "fraud_type": "pattern_shift",
        "pattern": "pattern_shift",
        "volume": night.sum(),
        "hours_checked": 24,
        "current_vector": pytest.approx(normalized(night).tolist(), **APPROX),
        "baseline_vector": pytest.approx(vector.tolist(), **APPROX),
        "baseline_volume": pytest.approx(volume, **APPROX),
    }


def test_fraud_check_of_a_usual_day_and_of_a_day_without_baseline(api, history):
    today, days = history["today"], history["days"]
    usual = today - timedelta(days=3)
    vector, volume, _ = expected_baselines(history["learned"])[usual.weekday()]
    got = fraud_check(api, history, usual)
    assert got["similarity"] == pytest.approx(cos(normalized(days[usual]), vector), **APPROX)
    assert got["similarity"] >= 0.9
    assert got["volume_change_percent"] == round((days[usual].sum() - volume) / volume * 100, 2)
    assert got["is_fraud"] is False and "fraud_type" not in got and "pattern" not in got

    busier = today - timedelta(days=12)
    got = fraud_check(api, history, busier)
    assert got["similarity"] == pytest.approx(1.0, **APPROX)
    assert (got["volume_change_percent"], got["is_fraud"]) == (100.0, False)
    assert got["pattern"] == "volume_change" and "fraud_type" not in got  # unusual, but not the fraud of the contract

    unknown = today - timedelta(days=2)
    got = fraud_check(api, history, unknown)
    assert (got["similarity"], got["volume_change_percent"], got["is_fraud"]) == (1.0, 0.0, False)
    assert (got["baseline_vector"], got["baseline_volume"]) == ([0.0] * 24, 0.0)
    assert got["current_vector"] == normalized(days[unknown]).tolist() and got["volume"] == 20
    assert "fraud_type" not in got


def test_dashboard_data(api, history):
    customer, today, days, hour = history["customer"], history["today"], history["days"], history["hour"]
    response = api.get("/v1/dashboard/data", params={"customer_id": customer.customer_id, "metric": "api_calls",
                                                     "days": 14}, headers=customer.headers)  # fmt: skip
    assert response.status_code == 200, response.text
    got = response.json()
    baselines = expected_baselines(history["learned"])
    total = {d: float(v.sum()) for d, v in days.items()}

    want = []
    for n in range(13, -1, -1):
        day = today - timedelta(days=n)
        before = [total.get(day - timedelta(days=30 - i), 0.0) for i in range(30)]
        volume = expected_volume(total.get(day, 0.0), before, 3.0)
        volume_anomaly = volume["severity"] == "critical" and (day < today or volume["z"] > 0)
        baseline = baselines.get(day.weekday())
        pattern_anomaly = (
            day < today and baseline is not None and day in days and cos(normalized(days[day]), baseline[0]) < 0.9
        )
        kind = {(True, True): "both", (True, False): "volume", (False, True): "pattern"}.get(
            (volume_anomaly, pattern_anomaly)
        )
        row = {"date": day.isoformat(), "total": total.get(day, 0.0), "is_anomaly": kind is not None}
        want.append(row if kind is None else {**row, "anomaly_type": kind})
    assert got["usage_history"] == want
    marked = {row["date"]: row.get("anomaly_type") for row in want}
    assert marked[(today - timedelta(days=12)).isoformat()] == "volume"  # twice the volume, the usual hours
    assert marked[(today - timedelta(days=1)).isoformat()] == "pattern"  # the stolen key's night

    vector, volume, _ = baselines[today.weekday()]
    assert got["current_pattern"] == days[today].tolist()
    assert got["baseline_pattern"] == pytest.approx((vector * volume).tolist(), **APPROX)
    # Today is judged on its closed hours: the calls of the hour in progress
    # are not judged yet, and so far nothing of the usual day has happened.
    latest = got["latest_check"]
    assert latest == fraud_check(api, history, today)
    assert (latest["date"], latest["hours_checked"]) == (today.isoformat(), hour)
    assert (latest["similarity"], latest["is_fraud"], "pattern" in latest) == (1.0, False, False)
    assert latest["volume_change_percent"] == (-100.0 if hour > 0 else 0.0)
    assert latest["current_vector"] == normalized(days[today]).tolist()


def test_max_metric_days_are_peaks(api, customer, clickhouse, settings, redis):
    """storage_peak: an hour's value is its peak, a day's total its peak; the
    pattern's volume is the sum of the hourly peaks, as in the streaming detector."""
    wait_out(86400)
    today = utc_today()
    a, b = today - timedelta(days=2), today - timedelta(days=1)
    readings = [(a, 3, 5), (a, 3, 8), (a, 10, 6), (b, 3, 7), (b, 15, 9), (b, 15, 4)]
    events = [
        make_event(customer.customer_id, event_type="storage", timestamp=day_ms(d) + h * HOUR + i * 1000,
                   properties={"gb_stored": gb})
        for i, (d, h, gb) in enumerate(readings)
    ]  # fmt: skip
    post_events(api, customer, clickhouse, settings, events)
    base = {"customer_id": customer.customer_id, "metric": "storage_peak"}
    get = lambda path, **p: api.get(path, params={**base, **p}, headers=customer.headers).json()  # noqa: E731

    check = get("/v1/fraud/check", date=b.isoformat())
    assert check["current_vector"] == (np.eye(24)[3] * 7 / 16 + np.eye(24)[15] * 9 / 16).tolist()
    assert (check["volume"], check["similarity"], check["is_fraud"]) == (16, 1.0, False)

    built = api.post("/v1/fraud/baselines/build", json={**base, "days": 2}, headers=customer.headers).json()
    assert built["days_processed"] == 2
    assert built["weekdays_built"] == [WEEKDAYS[wd] for wd in sorted({a.weekday(), b.weekday()})]
    assert load_baselines(redis, customer.customer_id, "storage_peak")[a.weekday()].volume == 14

    dashboard = get("/v1/dashboard/data", days=3)
    assert [(r["date"], r["total"]) for r in dashboard["usage_history"]] == [
        (a.isoformat(), 8), (b.isoformat(), 9), (today.isoformat(), 0)]  # fmt: skip
    # Today's 0 is far below 8 and 9 (z = -12), but the day is not over: no anomaly yet.
    assert [r["is_anomaly"] for r in dashboard["usage_history"]] == [False, False, False]
    anomaly = get("/v1/anomalies/check", current_start=day_ms(b), current_end=day_ms(today) - 1, baseline_days=1)
    assert (anomaly["current_value"], anomaly["baseline"], anomaly["unit"]) == (
        9, {"mean": 8, "stddev": 0, "sample_count": 1}, "GB")  # fmt: skip


# -- refusals ------------------------------------------------------------------------


def test_refusals(api, customer):
    today = utc_today()
    routes = {
        "/v1/anomalies/check": {"current_start": day_ms(today) - DAY, "current_end": day_ms(today) - 1},
        "/v1/fraud/check": {"date": today.isoformat()},
        "/v1/dashboard/data": {"days": 7},
    }

    def get(path, headers=customer.headers, **params):
        base = {"customer_id": customer.customer_id, "metric": "api_calls", **routes[path]}
        return api.get(path, params={**base, **params}, headers=headers)

    def build(headers=customer.headers, **body):
        payload = {"customer_id": customer.customer_id, "metric": "api_calls", "days": 7, **body}
        return api.post("/v1/fraud/baselines/build", json=payload, headers=headers)

    for path in routes:
        assert get(path).status_code == 200
        assert get(path, headers={}).status_code == 401
        assert get(path, headers={"X-API-Key": "mf_not-a-key"}).status_code == 401
        assert get(path, customer_id="someone-else").status_code == 403
        unknown = get(path, metric="nope")
        assert unknown.status_code == 404 and "unknown metric" in unknown.json()["error"]
    early = get("/v1/anomalies/check", current_start=0, current_end=1)  # baseline windows before 1970: empty
    assert early.status_code == 200 and early.json()["baseline"]["sample_count"] == 0
    assert build().status_code == 200
    assert build(headers={}).status_code == 401
    assert build(customer_id="someone-else").status_code == 403
    assert build(metric="nope").status_code == 404

    bad = [
        ("/v1/anomalies/check", {"current_start": day_ms(today), "current_end": day_ms(today) - 1}),
        ("/v1/anomalies/check", {"baseline_days": 0}),
        ("/v1/anomalies/check", {"baseline_days": 91}),
        ("/v1/anomalies/check", {"threshold": 0}),
        ("/v1/anomalies/check", {"threshold": -1}),
        ("/v1/anomalies/check", {"threshold": "inf"}),
        ("/v1/anomalies/check", {"current_start": "yesterday"}),
        ("/v1/fraud/check", {"date": "2026-13-01"}),
        ("/v1/fraud/check", {"date": "yesterday"}),
        ("/v1/fraud/check", {"date": "20260101"}),
        ("/v1/fraud/check", {"date": "1969-12-31"}),
        ("/v1/fraud/check", {"date": (today + timedelta(days=1)).isoformat()}),
        ("/v1/dashboard/data", {"days": 0}),
        ("/v1/dashboard/data", {"days": 91}),
    ]
    for path, params in bad:
        response = get(path, **params)
        assert response.status_code == 400 and response.json()["error"], (path, params, response.text)
    for days in (0, 91, "many"):
        response = build(days=days)
        assert response.status_code == 422 and "days" in response.json()["error"], response.text


@pytest.mark.parametrize(
    "field, value, status",
    [
        ("customer_id", "x' OR '1'='1", 400),
        ("customer_id", "x}; DROP TABLE meterflow.events; --", 400),
        ("metric", "api_calls' OR 1=1 --", 404),
        ("metric", "api_calls} FROM system.tables --", 404),
    ],
)
def test_injection_attempts_are_refused_and_never_run(api, customer, clickhouse, field, value, status):
    params = {"customer_id": customer.customer_id, "metric": "api_calls", "current_start": 0,
              "current_end": int(time.time() * 1000), "date": utc_today().isoformat(), "days": 7}  # fmt: skip
    for path in ("/v1/anomalies/check", "/v1/fraud/check", "/v1/dashboard/data"):
        response = api.get(path, params={**params, field: value}, headers=customer.headers)
        assert response.status_code == status and response.json()["error"], response.text
    body = {"customer_id": customer.customer_id, "metric": "api_calls", "days": 7, field: value}
    response = api.post("/v1/fraud/baselines/build", json=body, headers=customer.headers)
    assert response.status_code == (422 if field == "customer_id" else 404), response.text
    assert clickhouse.query("EXISTS TABLE meterflow.events").result_rows[0][0] == 1
