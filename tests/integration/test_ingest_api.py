"""POST /v1/events and API keys against the running API, Redis and broker."""

from __future__ import annotations

import hashlib

from tests.integration.conftest import make_event, new_customer, now_ms, stored_count, wait_for


def test_health_reports_dependencies(api):
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok", "ready": True,
        "dependencies": {"redis": "ok", "kafka": "ok", "clickhouse": "ok", "dataflow": "ok"},
    }
    assert api.get("/health/ready").status_code == 200


def test_missing_and_unknown_keys_are_401(api, customer):
    body = {"events": [make_event(customer.customer_id)]}
    missing = api.post("/v1/events", json=body)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]
    assert api.post("/v1/events", json=body, headers={"X-API-Key": "mf_nope"}).status_code == 401


def test_revoked_key_stops_working_at_once(api, customer):
    body = {"events": [make_event(customer.customer_id)]}
    assert api.post("/v1/events", json=body, headers=customer.headers).status_code == 200
    revoke = api.post("/v1/admin/keys/revoke", json={"api_key": customer.api_key})
    assert revoke.status_code == 200
    assert api.post("/v1/events", json=body, headers=customer.headers).status_code == 401


def test_keys_are_stored_hashed(api, customer, redis):
    assert customer.api_key.startswith("mf_")
    stored = b"".join(redis.keys("apikey:*"))
    assert customer.api_key.encode() not in stored
    assert redis.exists("apikey:" + hashlib.sha256(customer.api_key.encode()).hexdigest())


def test_per_event_failures_do_not_fail_the_batch(api, customer, redis):
    good = make_event(customer.customer_id)
    events = [
        good,
        make_event(customer.customer_id, transaction_id="bad id"),
        make_event(customer.customer_id, transaction_id="too-new", timestamp=now_ms() + 3_600_000),
        make_event(customer.customer_id, transaction_id="big", properties={"s": "x" * 1001}),
        make_event("someone-else", transaction_id="foreign"),
        "not an object",
    ]
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1 and body["duplicates"] == 0
    reasons = {f["transaction_id"]: f["reason"] for f in body["failed"]}
    assert set(reasons) == {"bad id", "too-new", "big", "foreign", ""}
    assert "future" in reasons["too-new"]
    assert "1000" in reasons["big"]
    assert "API key" in reasons["foreign"]
    # The foreign event was neither produced nor claimed.
    assert not redis.keys("dedup:*:foreign")


def test_malformed_bodies_are_422_with_a_reason(api, customer):
    for body in [{}, {"events": []}, {"events": "x"}, {"events": [make_event("c")] * 1001}]:
        response = api.post("/v1/events", json=body, headers=customer.headers)
        assert response.status_code == 422, body
        assert response.json()["error"]
    raw = api.post("/v1/events", content=b"{not json", headers={**customer.headers, "Content-Type": "application/json"})
    assert raw.status_code == 422 and raw.json()["error"]


def test_transaction_ids_belong_to_their_customer(api, customer, settings, clickhouse):
    """Another tenant sending the same transaction_id first does not make
    this customer's event a duplicate."""
    other = new_customer(api, "other")
    tid = f"shared-{now_ms()}"
    first = api.post("/v1/events", json={"events": [make_event(other.customer_id, transaction_id=tid)]},
                     headers=other.headers).json()  # fmt: skip
    mine = api.post("/v1/events", json={"events": [make_event(customer.customer_id, transaction_id=tid)]},
                    headers=customer.headers).json()  # fmt: skip
    assert first["accepted"] == 1 and mine["accepted"] == 1 and mine["duplicates"] == 0
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 1, what="my event stored")
    wait_for(lambda: stored_count(clickhouse, settings, other.customer_id) == 1, what="theirs stored")
