"""Exact quantities and money end to end, and hostile values refused, against
the running system: API -> Kafka -> dataflow -> ClickHouse -> /v1/usage and
/v1/invoices/calculate."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import orjson
import pytest
from confluent_kafka import Producer

from api.usage import query_usage
from operators.metrics import Aggregation, Metric
from tests.integration.conftest import make_event, now_ms, stored_count, wait_for
from tests.integration.test_pipeline import read_topic

HOUR = 3_600_000
INT64_MAX = 2**63 - 1


def ingest(api, clickhouse, settings, customer, events) -> None:
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.status_code == 200 and not response.json()["failed"], response.text
    wait_for(
        lambda: stored_count(clickhouse, settings, customer.customer_id) >= len(events),
        timeout_s=60,
        what=f"{len(events)} rows",
    )


def usage_body(api, customer, metric: str, start: int, end: int) -> bytes:
    params = {"customer_id": customer.customer_id, "metric": metric, "start": start, "end": end}
    response = api.get("/v1/usage", params=params, headers=customer.headers)
    assert response.status_code == 200, response.text
    return response.content


def exact(body: bytes) -> dict:
    """JSON with its numbers as Decimal/int, as an exact client reads it."""
    return json.loads(body, parse_float=Decimal)


def test_decimal_fractions_and_int64_sums_are_exact_in_usage_and_invoices(api, clickhouse, settings, customer):
    t = now_ms() - HOUR
    cid = customer.customer_id
    events = [
        make_event(cid, event_type="compute", timestamp=t + i, properties={"cpu_ms": v})
        for i, v in enumerate([0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1])
    ]
    events += [make_event(cid, timestamp=t, properties={"bytes": INT64_MAX}) for _ in range(2)]
    events += [
        make_event(cid, event_type="storage", timestamp=t, properties={"gb_stored": "1234567890.123456789"}),
        make_event(cid, event_type="storage", timestamp=t + 1, properties={"gb_stored": 0.3}),
    ]
    ingest(api, clickhouse, settings, customer, events)

    compute = exact(usage_body(api, customer, "compute_time", t - HOUR, t + HOUR))
    assert compute["value"] == 1  # binary floats gave 1.0000000000000002
    bandwidth = exact(usage_body(api, customer, "bandwidth", t - HOUR, t + HOUR))
    assert bandwidth["value"] == 2 * INT64_MAX == 18446744073709551614
    # 19 significant digits: no double holds it; the JSON number is exact text.
    storage = usage_body(api, customer, "storage_peak", t - HOUR, t + HOUR)
    assert b'"value":1234567890.123456789' in storage

    body = {"customer_id": cid, "start": t - HOUR, "end": t + HOUR}
    response = api.post("/v1/invoices/calculate", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    invoice = exact(response.content)
    lines = {line["metric_code"]: line for line in invoice["lines"]}
    assert lines["compute_time"]["quantity"] == 1
    assert lines["compute_time"]["subtotal"] == Decimal("0.00")
    assert lines["bandwidth"]["quantity"] == 18446744073709551614
    # 18446744073709551614 x 0.00001 = 184467440737095.51614 -> .52
    assert lines["bandwidth"]["subtotal"] == Decimal("184467440737095.52")
    # 1234567890.123456789 GB x 0.10 = 123456789.0123456789 -> .01
    assert lines["storage_peak"]["subtotal"] == Decimal("123456789.01")
    assert invoice["subtotal"] == Decimal("184467440737095.52") + Decimal("123456789.01")

    # Stripe cannot charge that much: the billing run (a dry run: the session
    # has no Stripe key) says so with a 422, not a 500.
    response = api.post("/v1/billing/run", json=body, headers=customer.headers)
    assert response.status_code == 422, response.text
    assert "exceeds Stripe's limit" in response.json()["error"]


@pytest.mark.parametrize(
    "event_type, properties, why",
    [
        ("api_request", {"bytes": -5e6}, "must not be negative"),
        ("api_request", {"bytes": 1e31}, "larger than"),
        ("storage", {"gb_stored": 1e27}, "larger than"),
        ("compute", {"cpu_ms": 1e-12}, "digits after the decimal point"),
        ("api_request", {"bytes": "lots"}, "plain decimal number"),
    ],
)
def test_hostile_values_are_refused_per_event_and_billing_still_answers(
    api, clickhouse, settings, customer, event_type, properties, why
):
    t = now_ms() - HOUR
    good = make_event(customer.customer_id, timestamp=t, properties={"bytes": 5_000_000})
    bad = make_event(customer.customer_id, event_type=event_type, timestamp=t, properties=properties)
    response = api.post("/v1/events", json={"events": [good, bad]}, headers=customer.headers)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["accepted"] == 1
    assert [f["transaction_id"] for f in result["failed"]] == [bad["transaction_id"]]
    assert why in result["failed"][0]["reason"]
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 1, what="the good row")

    body = {"customer_id": customer.customer_id, "start": t - HOUR, "end": t + HOUR}
    response = api.post("/v1/invoices/calculate", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    lines = {line["metric_code"]: line for line in response.json()["lines"]}
    assert lines["bandwidth"]["quantity"] == 5_000_000  # a negative value lowered it before


def test_hostile_values_produced_straight_to_kafka_are_dead_lettered(api, clickhouse, settings, customer):
    """Anything can be produced to the topic: the dataflow holds values to the
    same domain as the API and dead-letters the rest with the reason."""
    token = uuid.uuid4().hex
    t = now_ms() - HOUR
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    hostile = [
        make_event(customer.customer_id, transaction_id=f"neg-{token}", timestamp=t, properties={"bytes": -5}),
        make_event(customer.customer_id, transaction_id=f"huge-{token}", timestamp=t, properties={"bytes": 1e31}),
    ]
    good = make_event(customer.customer_id, timestamp=t, properties={"bytes": 7})
    for event in (*hostile, good):
        producer.produce(settings.topic_events, value=orjson.dumps(event), key=customer.customer_id.encode())
    assert producer.flush(10) == 0

    negative = read_topic(settings, settings.topic_dlq, f"neg-{token}".encode())
    assert "must not be negative" in negative["reason"]
    huge = read_topic(settings, settings.topic_dlq, f"huge-{token}".encode())
    assert "larger than" in huge["reason"]
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 1, what="the good row")
    assert exact(usage_body(api, customer, "bandwidth", t - HOUR, t + HOUR))["value"] == 7


def test_every_numeric_aggregation_answers_an_exact_decimal(api, clickhouse, settings, customer):
    """AVG, MAX and LATEST of the same quantities, straight through query_usage:
    ClickHouse's own avg() of decimals would answer a binary float."""
    t = now_ms() - HOUR
    values = ["0.1", "0.2", "0.2", "1234567890.123456789"]
    events = [
        make_event(customer.customer_id, event_type="compute", timestamp=t + i, properties={"cpu_ms": v})
        for i, v in enumerate(values)
    ]
    ingest(api, clickhouse, settings, customer, events)

    def value(aggregation: Aggregation) -> Decimal:
        metric = Metric("m", "M", "compute", aggregation, "ms", "cpu_ms")
        usage = query_usage(clickhouse, settings.clickhouse_database, metric, customer.customer_id, t - HOUR, t + HOUR)
        assert isinstance(usage.value, Decimal)
        return usage.value

    # (0.1 + 0.2 + 0.2 + 1234567890.123456789) / 4 = 308641972.6558641972..., cut to 9 digits
    assert value(Aggregation.AVG) == Decimal("308641972.655864197")
    assert value(Aggregation.MAX) == Decimal("1234567890.123456789")
    assert value(Aggregation.LATEST) == Decimal("1234567890.123456789")
    assert value(Aggregation.SUM) == Decimal("1234567890.623456789")
