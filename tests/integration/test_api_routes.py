"""Every read route of the contract against the running API and real services."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import make_event, now_ms, stored_count, wait_for

HOUR = 3_600_000


def ingest(api, customer, events):
    for i in range(0, len(events), 1000):
        response = api.post("/v1/events", json={"events": events[i : i + 1000]}, headers=customer.headers)
        assert response.status_code == 200 and not response.json()["failed"], response.text
    wait_for(
        lambda: stored_count(api.clickhouse, api.settings, customer.customer_id) >= len(events),
        timeout_s=60,
        what=f"{len(events)} rows",
    )


@pytest.fixture
def client(api, clickhouse, settings):
    api.clickhouse, api.settings = clickhouse, settings
    return api


def test_metrics_catalog_is_public(client):
    response = client.get("/v1/metrics")
    assert response.status_code == 200
    metrics = {m["code"]: m for m in response.json()["metrics"]}
    assert metrics["api_calls"] == {
        "code": "api_calls", "name": "API Calls", "event_type": "api_request",
        "aggregation": "COUNT", "property": None, "unit": "calls",
    }  # fmt: skip
    assert (metrics["bandwidth"]["aggregation"], metrics["bandwidth"]["property"]) == ("SUM", "bytes")
    assert (metrics["storage_peak"]["aggregation"], metrics["storage_peak"]["property"]) == ("MAX", "gb_stored")
    assert (metrics["compute_time"]["aggregation"], metrics["compute_time"]["property"]) == ("SUM", "cpu_ms")


def test_pricing_is_public_and_matches_the_contract(client):
    rules = {r["metric_code"]: r for r in client.get("/v1/pricing").json()["pricing"]}
    assert len(rules) == 4
    assert rules["api_calls"] == {
        "metric_code": "api_calls", "model": "tiered", "currency": "USD",
        "tiers": [{"up_to": 1000, "unit_price": 0}, {"up_to": 10000, "unit_price": 0.001},
                  {"up_to": None, "unit_price": 0.0005}],
    }  # fmt: skip
    assert rules["bandwidth"] == {"metric_code": "bandwidth", "model": "flat", "currency": "USD", "unit_price": 0.00001}
    assert client.get("/v1/pricing/storage_peak").json()["unit_price"] == 0.1
    missing = client.get("/v1/pricing/nope")
    assert missing.status_code == 404 and missing.json()["error"]


def test_usage_per_aggregation_and_breakdown(client, customer):
    t = now_ms() - HOUR
    events = [make_event(customer.customer_id, timestamp=t + i, properties={"bytes": 100 * i, "region": "eu" if i % 2 else "us"}) for i in range(10)]
    events += [make_event(customer.customer_id, event_type="storage", timestamp=t, properties={"gb_stored": g}) for g in (3, 7.5, 5)]
    events += [make_event(customer.customer_id, event_type="compute", timestamp=t, properties={"cpu_ms": 250})]
    events += [make_event(customer.customer_id, timestamp=t - 10 * HOUR)]  # outside the period
    ingest(client, customer, events)

    def usage(metric, **extra):
        params = {"customer_id": customer.customer_id, "metric": metric, "start": t - HOUR, "end": t + HOUR, **extra}
        response = client.get("/v1/usage", params=params, headers=customer.headers)
        assert response.status_code == 200, response.text
        return response.json()

    calls = usage("api_calls")
    assert calls == {
        "customer_id": customer.customer_id, "metric": "api_calls",
        "period": {"start": t - HOUR, "end": t + HOUR}, "value": 10, "unit": "calls",
    }  # fmt: skip
    assert usage("bandwidth")["value"] == 4500
    assert usage("storage_peak")["value"] == 7.5
    assert usage("compute_time")["value"] == 250
    by_region = usage("bandwidth", group_by="region")
    assert by_region["breakdown"] == {"eu": 2500, "us": 2000}
    assert usage("api_calls", group_by="nonexistent")["breakdown"] == {"(none)": 10}
    # Bounds are inclusive.
    assert client.get("/v1/usage", params={"customer_id": customer.customer_id, "metric": "api_calls", "start": t, "end": t},
                      headers=customer.headers).json()["value"] == 1  # fmt: skip


def test_usage_refusals(client, customer):
    base = {"customer_id": customer.customer_id, "metric": "api_calls", "start": 0, "end": now_ms()}
    get = lambda **p: client.get("/v1/usage", params={**base, **p}, headers=customer.headers)  # noqa: E731
    assert get(customer_id="someone-else").status_code == 403
    unknown = get(metric="nope")
    assert unknown.status_code == 404 and "unknown metric" in unknown.json()["error"]
    assert get(start=10, end=5).status_code == 400
    assert get(start="yesterday").status_code == 400
    assert client.get("/v1/usage", params=base).status_code == 401


@pytest.mark.parametrize(
    "field, value",
    [
        ("group_by", "region'] FROM meterflow.events; DROP TABLE meterflow.events; --"),
        ("group_by", "x) OR 1=1 --"),
        ("customer_id", "x' OR '1'='1"),
        ("metric", "api_calls' OR 1=1 --"),
    ],
)
def test_injection_attempts_are_refused_and_never_run(client, customer, clickhouse, field, value):
    params = {"customer_id": customer.customer_id, "metric": "api_calls", "start": 0, "end": now_ms(), field: value}
    response = client.get("/v1/usage", params=params, headers=customer.headers)
    assert response.status_code in (400, 403, 404), response.text
    assert response.json()["error"]
    assert clickhouse.query("EXISTS TABLE meterflow.events").result_rows[0][0] == 1


def test_invoice_numbers_match_the_contract(client, customer):
    t = now_ms() - HOUR
    events = [make_event(customer.customer_id, timestamp=t, properties={}) for _ in range(15_000)]
    events += [make_event(customer.customer_id, event_type="bandwidth_only", timestamp=t)]
    events += [make_event(customer.customer_id, timestamp=t, properties={"bytes": b}) for b in (1000, 2500)]
    events += [make_event(customer.customer_id, event_type="storage", timestamp=t, properties={"gb_stored": g}) for g in (40, 100, 60)]
    ingest(client, customer, events)

    body = {"customer_id": customer.customer_id, "start": t - HOUR, "end": t + HOUR}
    response = client.post("/v1/invoices/calculate", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    invoice = response.json()
    lines = {line["metric_code"]: line for line in invoice["lines"]}
    assert set(lines) == {"api_calls", "bandwidth", "storage_peak"}  # no compute usage, no line
    assert lines["api_calls"]["quantity"] == 15_002
    assert lines["api_calls"]["unit_price_display"] == "Tiered"
    assert [tier["amount"] for tier in lines["api_calls"]["tier_breakdown"]] == [0, 9, 2.501]
    assert lines["api_calls"]["subtotal"] == 11.5  # 15,000 -> 11.50 (+2 calls = 0.001, rounds away)
    assert (lines["bandwidth"]["quantity"], lines["bandwidth"]["subtotal"]) == (3500, 0.04)
    assert lines["bandwidth"]["unit_price_display"] == "$0.00001"
    assert (lines["storage_peak"]["quantity"], lines["storage_peak"]["subtotal"]) == (100, 10.0)
    assert invoice["subtotal"] == 21.54
    assert (invoice["currency"], invoice["status"], invoice["customer_id"]) == ("USD", "draft", customer.customer_id)
    assert invoice["invoice_id"].startswith("inv_")
    again = client.post("/v1/invoices/calculate", json=body, headers=customer.headers).json()
    assert again["invoice_id"] == invoice["invoice_id"]
    assert client.post("/v1/invoices/calculate", json={**body, "customer_id": "other"}, headers=customer.headers).status_code == 403


def test_rate_limit_is_exact_under_concurrency(client, customer, settings):
    url = f"http://{settings.api_host}:{settings.api_port}/v1/usage"
    params = {"customer_id": customer.customer_id, "metric": "nope", "start": 0, "end": 1}

    def call(_):
        with httpx.Client(timeout=30) as c:
            return c.get(url, params=params, headers=customer.headers)

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(call, range(130)))
    codes = [r.status_code for r in responses]
    assert codes.count(404) == 100  # admitted (unknown metric is the cheapest authenticated answer)
    assert codes.count(429) == 30
    for r in responses:
        assert r.headers["X-RateLimit-Limit"] == "100"
        assert r.headers["X-RateLimit-Reset"] == "60"
        assert 0 <= int(r.headers["X-RateLimit-Remaining"]) < 100
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"].startswith("rate limit")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.status_code == 404)
    assert remaining == list(range(100))
