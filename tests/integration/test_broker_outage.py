"""Broker down: the API refuses with 503 and claims nothing; once the broker is
back the client's retry is accepted, and every event, including those
acknowledged just before the broker went down, is stored exactly once."""

from __future__ import annotations

from operators.dedup import dedup_key
from tests.integration.conftest import make_event, stored_count, wait_for


def test_broker_down_is_503_and_nothing_is_lost_after_it_returns(
    api, customer, stack, settings, clickhouse, redis
):
    before = [make_event(customer.customer_id) for _ in range(50)]
    during = [make_event(customer.customer_id) for _ in range(20)]

    accepted = api.post("/v1/events", json={"events": before}, headers=customer.headers)
    assert accepted.json()["accepted"] == 50
    # Stop the broker at once: some of `before` may not have reached the
    # dataflow yet; the broker's durable log must keep them.
    stack.stop_service("kafka")
    try:
        refused = api.post("/v1/events", json={"events": during}, headers=customer.headers)
        assert refused.status_code == 503, refused.text
        assert "broker" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        assert not any(redis.exists(dedup_key(customer.customer_id, e["transaction_id"])) for e in during)
        health = api.get("/health").json()
        assert health["status"] == "degraded" and health["dependencies"]["kafka"] == "down"
        assert api.get("/health/ready").status_code == 503
    finally:
        stack.start_service("kafka")

    # The client retries until the API answers 200, as a client should after a 503.
    outcome = {}

    def retry() -> bool:
        response = api.post("/v1/events", json={"events": during}, headers=customer.headers)
        outcome.update(response.json() if response.status_code == 200 else {})
        return response.status_code == 200

    wait_for(retry, timeout_s=60, what="the API to accept the retried batch")
    assert outcome["accepted"] == 20 and outcome["duplicates"] == 0

    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 70, timeout_s=60, what="70 rows")
    assert stored_count(clickhouse, settings, customer.customer_id, final=False) == 70
