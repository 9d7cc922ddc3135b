"""Admin token enforcement (in-process app on the real Redis) and the
aggregations the catalog can use beyond the contract's four metrics."""

from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal

from fastapi.testclient import TestClient

from api.main import create_app
from api.usage import query_usage
from operators.metrics import Aggregation, Metric
from tests.integration.conftest import make_event, now_ms, stored_count, wait_for


def test_admin_routes_need_the_token_when_one_is_configured(settings):
    app = create_app(dataclasses.replace(settings, admin_token="s3cret-admin"))
    with TestClient(app) as client:
        body = {"customer_id": "admin-test", "name": "k"}
        assert client.post("/v1/admin/keys", json=body).status_code == 401
        assert client.post("/v1/admin/keys", json=body, headers={"X-Admin-Token": "wrong"}).status_code == 401
        created = client.post("/v1/admin/keys", json=body, headers={"X-Admin-Token": "s3cret-admin"})
        assert created.status_code == 201
        assert set(created.json()) == {"api_key", "customer_id", "name", "created_at"}
        revoke = {"api_key": created.json()["api_key"]}
        assert client.post("/v1/admin/keys/revoke", json=revoke).status_code == 401
        assert client.post("/v1/admin/keys/revoke", json=revoke, headers={"X-Admin-Token": "s3cret-admin"}).status_code == 200
        unknown = client.post("/v1/admin/keys/revoke", json=revoke | {"api_key": "mf_x"}, headers={"X-Admin-Token": "s3cret-admin"})
        assert unknown.status_code == 404


def test_avg_unique_count_and_latest(api, customer, settings, clickhouse):
    t = now_ms() - 60_000
    users = ["u1", "u2", "u1", "u3"]
    events = [
        make_event(customer.customer_id, event_type="session", timestamp=t + i, properties={"user": u, "seconds": 10 * (i + 1)})
        for i, u in enumerate(users)
    ]
    events.append(make_event(customer.customer_id, event_type="session", timestamp=t + 10, properties={"other": 1}))
    assert api.post("/v1/events", json={"events": events}, headers=customer.headers).json()["accepted"] == 5
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 5, what="rows")

    def value(aggregation: Aggregation, prop: str) -> Decimal:
        metric = Metric(f"m_{uuid.uuid4().hex[:6]}", "M", "session", aggregation, "x", prop)
        return query_usage(clickhouse, "meterflow", metric, customer.customer_id, t, t + 1000).value

    assert value(Aggregation.UNIQUE_COUNT, "user") == 3
    assert value(Aggregation.AVG, "seconds") == 25  # events without the property do not count
    assert value(Aggregation.LATEST, "seconds") == 40
    assert value(Aggregation.MAX, "seconds") == 40
