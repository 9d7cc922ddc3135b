"""Bad input against the running API: a schema-driven fuzz of every
operation, then the hostile bodies a fuzzer does not make on its own.

The promise under test: whatever arrives, the API answers with a status
below 500 and, when it refuses, with `{"error": "<reason>"}`. A 503 would
mean a dependency is down, which it is not in the test session, so every
5xx is a failure here.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from meterflow.settings import Settings
from operators.events import MAX_AGE_MS, MAX_FUTURE_MS
from operators.metrics import DEFAULT_CATALOG
from tests.integration.conftest import Customer, make_event, new_customer, now_ms

ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
METRICS = [metric.code for metric in DEFAULT_CATALOG]
# Calls per customer before the next one takes over: below the rate limit,
# so the fuzzer reaches the routes and not only the limiter's 429.
CALLS_PER_TENANT = 90
MAX_EXAMPLES = 50  # per operation: 30-60 s in all on 2 cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(settings: Settings) -> BaseSchema:
    return schemathesis.openapi.from_url(f"http://{settings.api_host}:{settings.api_port}/openapi.json")


@dataclass
class Tenants:
    """Real customers with real keys, a fresh one every CALLS_PER_TENANT calls."""

    api: httpx.Client
    current: Customer | None = None
    calls: int = 0

    def next(self) -> Customer:
        if self.current is None or self.calls >= CALLS_PER_TENANT:
            self.current, self.calls = new_customer(self.api, "fuzz"), 0
        self.calls += 1
        return self.current


@pytest.fixture(scope="module")
def tenants(api: httpx.Client) -> Tenants:
    return Tenants(api)


def steer(case: Case, customer_id: str) -> None:
    """Turn well-formed values into ones that lead somewhere: customer ids
    into the tenant's, metric names into catalog metrics, dates and event
    timestamps into the accepted range, each picked by the generated value.
    So generated requests get past the 403, 404 and range checks into the
    code behind them. Malformed values stay as generated: they are the
    negative cases."""
    containers = [case.query, case.body, case.path_parameters]
    if isinstance(case.body, dict) and isinstance(case.body.get("events"), list):
        containers += case.body["events"]
    for container in containers:
        if not isinstance(container, dict):
            continue
        if isinstance(container.get("customer_id"), str) and ID.fullmatch(container["customer_id"]):
            container["customer_id"] = customer_id
        for name in ("metric", "metric_code"):
            if isinstance(container.get(name), str) and 1 <= len(container[name]) <= 100:
                container[name] = METRICS[len(container[name]) % len(METRICS)]
        if isinstance(container.get("date"), str) and DATE.fullmatch(container["date"]):
            days_back = int(container["date"].replace("-", "")) % 90
            container["date"] = (datetime.now(timezone.utc).date() - timedelta(days=days_back)).isoformat()
        stamp = container.get("timestamp")
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
            container["timestamp"] = now_ms() - int(abs(stamp)) % MAX_AGE_MS


def assert_refusal_explained(response: httpx.Response | Any) -> None:
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), (
            response.status_code,
            response.text,
        )


def fuzz(operation: APIOperation, tenants: Tenants) -> Callable[[], None]:
    """A Hypothesis test of one operation: valid and invalid requests alike."""
    cases = st.one_of([operation.as_strategy(mode) for mode in GenerationMode])

    # Deadline and slow-machine health checks: the suite's profile (tests/conftest.py).
    @hypothesis.settings(max_examples=MAX_EXAMPLES, database=None)
    @hypothesis.given(cases)
    def run(case: Case) -> None:
        tenant = tenants.next()
        steer(case, tenant.customer_id)
        response = case.call(headers=tenant.headers, timeout=30)
        case.validate_response(response, checks=CHECKS)
        assert_refusal_explained(response)

    return run


def test_every_operation_answers_without_5xx_and_explains_refusals(api_schema, tenants):
    """Each operation of /openapi.json, MAX_EXAMPLES requests generated from
    the schema and deliberately off it. (One test looping over operations:
    schemathesis' own pytest wrapper does not run on pytest 9.2.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 16, [op.label for op in operations]
    failures: dict[str, str] = {}
    for operation in operations:
        try:
            fuzz(operation, tenants)()
        except Exception as exc:  # noqa: BLE001 - every operation runs; all failures are reported below
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    assert not failures, "\n\n".join(f"{label}\n{error}" for label, error in failures.items())


# -- what a schema-driven fuzzer does not send -------------------------------------


def post_raw(api: httpx.Client, customer: Customer, path: str, content: bytes | Iterator[bytes]) -> httpx.Response:
    return api.post(path, content=content, headers={"content-type": "application/json", **customer.headers})


def raw_event(customer: Customer, tx: str, timestamp: bytes | None = None, **fields: bytes) -> bytes:
    """One event as JSON text, with the values given as JSON text too: what
    json.dumps will not write (NaN, lone surrogates, 100,000 brackets)."""
    text = {
        b"transaction_id": b'"%s"' % tx.encode(),
        b"customer_id": b'"%s"' % customer.customer_id.encode(),
        b"event_type": b'"x"',
        b"timestamp": timestamp or str(now_ms()).encode(),
        **{name.encode(): value for name, value in fields.items()},
    }
    return b"{" + b", ".join(b'"%s": %s' % item for item in text.items()) + b"}"


def raw_batch(*events: bytes) -> bytes:
    return b'{"events": [' + b", ".join(events) + b"]}"


def reasons(response: httpx.Response) -> dict[str, str]:
    """transaction_id -> reason of a 200 that accepted nothing."""
    assert response.status_code == 200 and response.json()["accepted"] == 0, response.text
    return {f["transaction_id"]: f["reason"] for f in response.json()["failed"]}


def test_oversized_bodies_are_refused_before_parsing(api, customer, settings):
    limit = settings.api_max_body_bytes
    at_limit = raw_batch(b" " * (limit - len(raw_batch(b"1"))) + b"1")
    assert len(at_limit) == limit
    response = post_raw(api, customer, "/v1/events", at_limit)
    assert response.status_code == 200, response.text  # the limit itself is allowed

    over = at_limit + b" "
    declared = post_raw(api, customer, "/v1/events", over)
    assert declared.status_code == 413 and str(limit) in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield from (over[i : i + 65536] for i in range(0, len(over), 65536))

    streamed = post_raw(api, customer, "/v1/events", chunks())
    assert streamed.status_code == 413 and str(limit) in streamed.json()["error"]
    # Refused before the key is even looked at: no auth, no parsing.
    anonymous = api.post("/v1/invoices/calculate", content=over, headers={"content-type": "application/json"})
    assert anonymous.status_code == 413


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_json_nested_deeper_than_the_parser_goes_is_a_400(api, customer):
    deep = nested(100_000)
    for path, body in [
        ("/v1/events", raw_batch(deep)),
        ("/v1/events", raw_batch(raw_event(customer, "t", properties=b'{"k": %s}' % deep))),
        ("/v1/invoices/calculate", b'{"customer_id": %s, "start": 0, "end": 1}' % deep),
    ]:
        response = post_raw(api, customer, path, body)
        assert response.status_code == 400 and "nested too deeply" in response.json()["error"], response.text


def test_nesting_the_parser_takes_is_refused_where_it_is(api, customer):
    deep = nested(500)
    assert "JSON object" in reasons(post_raw(api, customer, "/v1/events", raw_batch(deep)))[""]
    prop = post_raw(api, customer, "/v1/events", raw_batch(raw_event(customer, "t", properties=b'{"k": %s}' % deep)))
    assert "string, number or boolean" in reasons(prop)["t"]
    period = post_raw(api, customer, "/v1/invoices/calculate", b'{"customer_id": %s, "start": 0, "end": 1}' % deep)
    assert period.status_code == 422 and "customer_id" in period.json()["error"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_refused_with_a_reason(api, customer, literal):
    """Python's JSON parser reads these literals (JSON itself has none) as
    floats: they must meet the finiteness checks, not crash on the way."""
    body = raw_batch(raw_event(customer, "t1", literal), raw_event(customer, "t2", properties=b'{"n": %s}' % literal))
    found = reasons(post_raw(api, customer, "/v1/events", body))
    assert "finite" in found["t1"] and "'n'" in found["t2"], found
    period = b'{"customer_id": "%s", "start": %s, "end": 1}' % (customer.customer_id.encode(), literal)
    invoice = post_raw(api, customer, "/v1/invoices/calculate", period)
    assert invoice.status_code == 422 and "start" in invoice.json()["error"], invoice.text


def test_a_number_too_long_to_read_is_a_400(api, customer):
    response = post_raw(api, customer, "/v1/events", raw_batch(raw_event(customer, "t", b"1" + b"0" * 5000)))
    assert response.status_code == 400 and "too many digits" in response.json()["error"], response.text
    # Long, but readable: just far in the future.
    huge = post_raw(api, customer, "/v1/events", raw_batch(raw_event(customer, "t", b"1" + b"0" * 400)))
    assert "future" in reasons(huge)["t"]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"]
)
def test_a_body_that_is_not_json_is_a_422_that_says_so(api, customer, content_type):
    body = json.dumps({"events": [make_event(customer.customer_id)]}).encode()
    headers = customer.headers | ({"content-type": content_type} if content_type else {})
    response = api.post("/v1/events", content=body, headers=headers)
    assert response.status_code == 422 and "JSON" in response.json()["error"], response.text


def test_malformed_json_names_where(api, customer):
    response = post_raw(api, customer, "/v1/events", b'{"events": [1,}')
    assert response.status_code == 422 and "character 14" in response.json()["error"], response.text


def test_unicode_ids_and_lone_surrogates_are_refused_with_a_reason(api, customer):
    unicode_id = "cüstömer-ß"
    params = {"customer_id": unicode_id, "metric": "api_calls", "start": 0, "end": 1}
    usage = api.get("/v1/usage", params=params, headers=customer.headers)
    assert usage.status_code == 400 and "customer_id" in usage.json()["error"]
    key = api.post("/v1/admin/keys", json={"customer_id": unicode_id, "name": "x"})
    assert key.status_code == 422 and "customer_id" in key.json()["error"]
    body = raw_batch(
        b'{"transaction_id": "\\ud800", "customer_id": "c", "event_type": "x", "timestamp": 1}',
        raw_event(customer, "t1", properties=b'{"\\udfff": 1}'),
        raw_event(customer, "t2", properties=b'{"k": "a\\ud83d"}'),
        raw_event(customer, "t3", event_type=b'"\\u00fcber \\u2603"', properties=b'{"\\u00e9": "\\ud83d\\ude00"}'),
    )
    response = post_raw(api, customer, "/v1/events", body)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1  # t3: valid Unicode everywhere, a surrogate pair included
    found = {f["transaction_id"]: f["reason"] for f in response.json()["failed"]}
    assert set(found) == {"?", "t1", "t2"}  # "?" stands for the lone surrogate it cannot echo
    assert "Unicode" in found["t1"] and "Unicode" in found["t2"]


def test_timestamps_at_the_bounds(api, customer):
    margin = 10_000  # the server's clock reads a little later than ours
    now = now_ms()
    stamps = {
        "future-ok": now + MAX_FUTURE_MS - margin,
        "future-no": now + MAX_FUTURE_MS + margin,
        "old-ok": now - MAX_AGE_MS + margin,
        "old-no": now - MAX_AGE_MS - margin,
    }
    events = [
        make_event(customer.customer_id, transaction_id=f"{name}-{uuid.uuid4().hex}", timestamp=stamp)
        for name, stamp in stamps.items()
    ]
    result = api.post("/v1/events", json={"events": events}, headers=customer.headers).json()
    assert result["accepted"] == 2
    refused = sorted(f["transaction_id"].rsplit("-", 1)[0] for f in result["failed"])
    assert refused == ["future-no", "old-no"]
