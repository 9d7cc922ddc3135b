"""Security against the running API: tenant isolation on every route, keys
at rest, the admin token, and injection through every string parameter.

The routes and their parameters are read from the API's own /openapi.json,
so a route or parameter added later is either covered here or fails
`test_every_route_with_a_key_or_a_string_is_covered`. (Rate limit exactness
under concurrency: tests/integration/test_api_routes.py.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.integration.conftest import make_event, new_customer, now_ms, stored_count, wait_for

Route = tuple[str, str]  # (METHOD, path template)
DAY = 86_400_000
EVENTS: Route = ("POST", "/v1/events")


def valid_requests(customer_id: str) -> dict[Route, dict[str, Any]]:
    """One valid request per route that takes a key or a string, as httpx
    keyword arguments (the path of `/v1/pricing/{metric_code}` is filled in
    from `path`)."""
    now = now_ms()
    subject = {"customer_id": customer_id, "metric": "api_calls"}
    period = {"customer_id": customer_id, "start": now - DAY, "end": now}
    today = datetime.now(timezone.utc).date().isoformat()
    own = {"customer_id": customer_id}
    return {
        EVENTS: {"json": {"events": [make_event(customer_id)]}},
        ("GET", "/v1/usage"): {"params": {**subject, "start": now - DAY, "end": now, "group_by": "region"}},
        ("POST", "/v1/invoices/calculate"): {"json": period},
        ("POST", "/v1/billing/run"): {"json": period},
        ("GET", "/v1/invoices"): {"params": {"customer_id": customer_id, "status": "paid"}},
        ("GET", "/v1/invoices/{invoice_id}"): {"path": {"invoice_id": "inv_0123456789abcdef01234567"}},
        ("GET", "/v1/alerts"): {"params": {"customer_id": customer_id, "kind": "usage_spike"}},
        ("GET", "/v1/anomalies/check"): {"params": {**subject, "current_start": now - DAY, "current_end": now}},
        ("POST", "/v1/fraud/baselines/build"): {"json": {**subject, "days": 7}},
        ("GET", "/v1/fraud/check"): {"params": {**subject, "date": today}},
        ("GET", "/v1/dashboard/data"): {"params": {**subject, "days": 7}},
        ("POST", "/v1/admin/keys"): {"json": {"customer_id": customer_id, "name": "sec"}},
        ("POST", "/v1/admin/keys/revoke"): {"json": {"api_key": "mf_unknown"}},
        ("GET", "/v1/admin/keys"): {"params": own},
        ("DELETE", "/v1/admin/keys/{key_id}"): {"path": {"key_id": "key_0123456789abcdef01234567"}, "params": own},
        ("GET", "/v1/pricing/{metric_code}"): {"path": {"metric_code": "api_calls"}},
        ("POST", "/v1/webhooks"): {"json": {**own, "url": "https://example.com/hooks", "events": ["invoice.paid"]}},
        ("GET", "/v1/webhooks"): {"params": own},
        ("GET", "/v1/webhooks/deliveries"): {"params": {**own, "status": "dead"}},
        ("DELETE", "/v1/webhooks/{endpoint_id}"): {"path": {"endpoint_id": "we_0"}, "params": own},
    }


@dataclasses.dataclass(frozen=True)
class Operation:
    """What /openapi.json says about one route."""

    keyed: bool  # needs X-API-Key
    strings: tuple[tuple[str, str], ...]  # (where: params/json/path, name) of each string parameter

    def has_customer(self) -> bool:
        return any(name == "customer_id" for _, name in self.strings)


def _is_string(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "string" or any(_is_string(s) for s in schema.get("anyOf", []))


def operations(openapi: dict[str, Any]) -> dict[Route, Operation]:
    schemas = openapi["components"]["schemas"]
    found = {}
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            strings = [
                ({"query": "params", "path": "path"}[p["in"]], p["name"])
                for p in params
                if p["in"] in ("query", "path") and _is_string(p["schema"])
            ]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in body:
                properties = schemas[body["$ref"].rsplit("/", 1)[-1]].get("properties", {})
                strings += [("json", name) for name, schema in properties.items() if _is_string(schema)]
            keyed = any(p["in"] == "header" and p["name"].lower() == "x-api-key" for p in params)
            found[(method.upper(), path)] = Operation(keyed, tuple(strings))
    return found


@pytest.fixture(scope="module")
def routes(api: httpx.Client) -> dict[Route, Operation]:
    return operations(api.get("/openapi.json").json())


def call(api: httpx.Client, route: Route, request: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    method, template = route
    kwargs = dict(request)
    path = template.format(**{k: quote(str(v), safe="") for k, v in kwargs.pop("path", {}).items()})
    return api.request(method, path, headers=headers, **kwargs)


def refused(response: httpx.Response, status: int) -> bool:
    return response.status_code == status and bool(response.json().get("error"))


def test_every_route_with_a_key_or_a_string_is_covered(routes):
    covered = set(valid_requests("c"))
    missing = {route for route, op in routes.items() if (op.keyed or op.strings) and route not in covered}
    assert not missing, f"add these routes to valid_requests() so the security tests cover them: {missing}"
    assert {route for route, op in routes.items() if op.keyed} >= {EVENTS, ("GET", "/v1/usage")}
    with_customer = {route for route, op in routes.items() if op.has_customer()}
    assert with_customer >= {("GET", "/v1/usage"), ("POST", "/v1/billing/run")}


def test_no_key_an_unknown_key_and_a_revoked_key_are_401_on_every_keyed_route(api, routes):
    revoked = new_customer(api, "sec")
    assert api.post("/v1/admin/keys/revoke", json={"api_key": revoked.api_key}).json() == {"revoked": True}
    requests = valid_requests(revoked.customer_id)
    keyed = [route for route, op in routes.items() if op.keyed]
    for route in keyed:
        for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "mf_" + uuid.uuid4().hex}, revoked.headers):
            response = call(api, route, requests[route], headers)
            assert refused(response, 401), (route, headers, response.status_code, response.text)


def test_another_customers_id_is_403_on_every_route_and_leaves_no_trace(api, routes, settings, redis, clickhouse):
    attacker, victim = new_customer(api, "sec"), new_customer(api, "sec")
    requests = valid_requests(victim.customer_id)
    targets = [route for route, op in routes.items() if op.keyed and op.has_customer()]
    assert len(targets) >= 8, targets
    for route in targets:
        response = call(api, route, requests[route], attacker.headers)
        assert refused(response, 403), (route, response.status_code, response.text)

    # Events under the victim's id are refused one by one, never produced.
    own, foreign = make_event(attacker.customer_id), make_event(victim.customer_id)
    result = api.post("/v1/events", json={"events": [own, foreign]}, headers=attacker.headers).json()
    assert result["accepted"] == 1
    assert [f["transaction_id"] for f in result["failed"]] == [foreign["transaction_id"]]
    assert "API key" in result["failed"][0]["reason"]
    assert not redis.keys(f"dedup:*:{foreign['transaction_id']}")
    wait_for(lambda: stored_count(clickhouse, settings, attacker.customer_id) == 1, what="the attacker's own event")

    # Nothing anywhere holds the victim's data: no Redis key names it but
    # the index of its own key (written when the admin made it; the key
    # hash names nobody), no row in ClickHouse does.
    assert list(redis.scan_iter(match=f"*{victim.customer_id}*", count=1000)) == [f"apikeys:{victim.customer_id}".encode()]
    assert stored_count(clickhouse, settings, victim.customer_id, final=False) == 0
    alerts = clickhouse.query(
        f"SELECT count() FROM {settings.clickhouse_database}.alerts WHERE customer_id = {{c:String}}",  # sql-ok
        parameters={"c": victim.customer_id},
    ).result_rows[0][0]
    assert alerts == 0


def test_keys_are_stored_only_as_sha256(api, redis):
    customer = new_customer(api, "sec")
    plain = customer.api_key.encode()
    digest = hashlib.sha256(plain).hexdigest()
    records = list(redis.scan_iter(match="apikey:*", count=1000))
    assert f"apikey:{digest}".encode() in records
    for record in records:
        assert re.fullmatch(rb"apikey:[0-9a-f]{64}", record), record
        fields = redis.hgetall(record)
        assert plain not in b"".join([*fields, *fields.values()])
    stored = redis.hgetall(f"apikey:{digest}")
    assert set(stored) == {b"customer_id", b"name", b"created_at", b"key_id", b"prefix"}
    # What an admin sees to recognise the key: its first 8 random characters of 43, no more.
    assert stored[b"prefix"] == plain[:11] and re.fullmatch(rb"key_[0-9a-f]{24}", stored[b"key_id"])
    assert redis.hgetall(f"apikeys:{customer.customer_id}") == {stored[b"key_id"]: digest.encode()}
    assert not [name for name in redis.scan_iter(match="*", count=1000) if plain in name]


def test_admin_token_accepts_only_the_exact_token(settings, redis):
    token = "s3cret-admin-token"
    app = create_app(dataclasses.replace(settings, admin_token=token))
    body = {"customer_id": f"adm-{uuid.uuid4().hex[:8]}", "name": "k"}
    with TestClient(app) as client:
        created = client.post("/v1/admin/keys", json=body, headers={"X-Admin-Token": token})
        assert created.status_code == 201, created.text
        api_key = created.json()["api_key"]
        wrong = [token[:-1], token + "x", token.upper(), "x" * len(token), api_key]
        for guess in wrong:
            for path, payload in (("/v1/admin/keys", body), ("/v1/admin/keys/revoke", {"api_key": api_key})):
                response = client.post(path, json=payload, headers={"X-Admin-Token": guess})
                assert refused(response, 401), (guess, response.text)
        # Bytes that are not ASCII (a header is Latin-1 on the wire): refused, not a 500.
        raw = client.post("/v1/admin/keys", json=body, headers=[(b"X-Admin-Token", token.encode() + b"\xe9")])
        assert refused(raw, 401), raw.text
        # The admin token is no API key, and an API key is no admin token.
        usage = {"customer_id": body["customer_id"], "metric": "api_calls", "start": 0, "end": 1}
        assert refused(client.get("/v1/usage", params=usage, headers={"X-API-Key": token}), 401)
        assert client.get("/v1/usage", params=usage, headers={"X-API-Key": api_key}).status_code == 200
    assert redis.exists(f"apikey:{hashlib.sha256(api_key.encode()).hexdigest()}")


INJECTIONS = [
    "'",
    "x' OR '1'='1",
    "'; DROP TABLE meterflow.events; --",
    '") OR 1=1 --',
    "\\",
    "x\\' OR 1=1 --",
    "{customer:String}",
    "a\x00b",
    "`events`",
]


def test_injection_through_every_string_parameter_is_refused_or_inert(api, routes, settings, clickhouse):
    canary = new_customer(api, "sec")
    api.post("/v1/events", json={"events": [make_event(canary.customer_id) for _ in range(3)]}, headers=canary.headers)
    wait_for(lambda: stored_count(clickhouse, settings, canary.customer_id) == 3, what="canary rows")
    tables = set(clickhouse.query(f"SHOW TABLES FROM {settings.clickhouse_database}").result_rows)  # sql-ok

    unexpected = []
    for route, op in routes.items():
        if not op.strings:
            continue
        caller = new_customer(api, "sec")  # its own rate-limit window
        for where, name in op.strings:
            for payload in INJECTIONS:
                request = valid_requests(caller.customer_id)[route]
                request = {**request, where: {**request[where], name: payload}}
                response = call(api, route, request, caller.headers)
                inert = route == ("POST", "/v1/admin/keys") and name == "name"  # any name is fine, kept verbatim
                if inert:
                    ok = response.status_code == 201 and response.json()["name"] == payload
                else:
                    ok = 400 <= response.status_code < 500 and bool(response.json().get("error"))
                if not ok:
                    unexpected.append((route, name, payload, response.status_code, response.text[:200]))
    assert not unexpected, unexpected
    assert set(clickhouse.query(f"SHOW TABLES FROM {settings.clickhouse_database}").result_rows) == tables  # sql-ok
    assert stored_count(clickhouse, settings, canary.customer_id) == 3


def test_injection_text_in_events_is_stored_verbatim(api, customer, settings, clickhouse):
    """Event types, property names and values may be any text: they reach
    ClickHouse as data, byte for byte, and run nothing."""
    printable = [p for p in INJECTIONS if p.isprintable()]
    events = [
        make_event(customer.customer_id, event_type=payload, properties={payload: payload, "n": i})
        for i, payload in enumerate(printable)
    ]
    events.append(make_event(customer.customer_id, properties={"nul": "a\x00b"}))
    result = api.post("/v1/events", json={"events": events}, headers=customer.headers).json()
    assert result["accepted"] == len(events), result
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == len(events), what="rows")
    rows = clickhouse.query(
        f"SELECT event_type, properties FROM {settings.clickhouse_database}.events FINAL "  # sql-ok
        "WHERE customer_id = {c:String}",
        parameters={"c": customer.customer_id},
    ).result_rows
    stored = {(event_type, tuple(sorted(props.items()))) for event_type, props in rows}
    expected = {(e["event_type"], tuple(sorted((k, str(v)) for k, v in e["properties"].items()))) for e in events}
    assert stored == expected
    refused_ids = api.post(
        "/v1/events",
        json={"events": [make_event(customer.customer_id, transaction_id=p) for p in INJECTIONS]
              + [make_event(p) for p in INJECTIONS]},  # fmt: skip
        headers=customer.headers,
    ).json()
    assert refused_ids["accepted"] == 0 and len(refused_ids["failed"]) == 2 * len(INJECTIONS)
