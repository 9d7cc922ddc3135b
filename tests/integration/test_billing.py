"""POST /v1/billing/run against the real services.

The dry run goes through the session's API. The live path needs an API
configured with a Stripe key, so a second real API process is started on
the session's services, with STRIPE_API_BASE pointing at a local stand-in
for Stripe's API (tests/integration/stripe_standin.py); the tests assert on
the HTTP requests the official Stripe SDK really sent.

Usage of a closed month is written straight to ClickHouse, as the dataflow
would have stored it: the API takes events of the last 30 days only, so on
the 31st of a month every event of the month before is refused (see
test_closed_month_usage_lands_in_the_billed_month_on_every_day).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterator

import httpx
import pytest

from api.deps import Clients
from api.billing_job import BillingJob
from api.invoice_store import InvoiceStore
from flows.clickhouse_sink import event_columns
from flows.messages import EventBatch
from meterflow.settings import Settings
from meterflow.storage import EVENTS_COLUMNS
from operators.billing import billing_key, customer_key
from operators.events import InvalidEvent, validate_event
from operators.invoices import build_invoice, invoice_id_for
from operators.metrics import catalog_by_code
from operators.periods import BillingPeriod
from operators.pricing import pricing_by_code
from tests.integration.conftest import Customer, make_event, new_customer, now_ms, stored_count, wait_for
from tests.integration.stripe_standin import STRIPE_KEY, StripeStandIn, live_api

HOUR = 3_600_000
CONFIGURED = "cus_configured"  # STRIPE_CUSTOMER_MAP's Stripe customer in the live API


def insert_events(clickhouse, settings: Settings, events: list[dict]) -> None:
    """`events` (as sent to /v1/events) straight into ClickHouse, in the rows
    the dataflow's sink writes for them: validated as they would have been
    when they arrived (so no 30-day limit), properties in their stored text."""
    valid = [validate_event(event, now_ms=event["timestamp"]) for event in events]
    columns = event_columns([EventBatch(valid, [event.transaction_id for event in valid])])
    clickhouse.insert(
        f"{settings.clickhouse_database}.events", columns, column_names=EVENTS_COLUMNS, column_oriented=True
    )


def through_api(timestamp: int, now: int) -> bool:
    """Whether `ingest` posts an event at `timestamp` to the API at `now`:
    only events of the current month do. Those of a closed month are written
    straight to ClickHouse, whatever the day, so no test depends on the date."""
    return timestamp > closed_month(now).end_ms


@pytest.fixture
def ingest(api, clickhouse, settings):
    def ingest(customer: Customer, events: list[dict]) -> None:
        expected = stored_count(clickhouse, settings, customer.customer_id) + len(events)
        now = now_ms()
        closed = [event for event in events if not through_api(event["timestamp"], now)]
        if closed:
            insert_events(clickhouse, settings, closed)
        current = [event for event in events if through_api(event["timestamp"], now)]
        for i in range(0, len(current), 1000):
            response = api.post("/v1/events", json={"events": current[i : i + 1000]}, headers=customer.headers)
            assert response.status_code == 200 and not response.json()["failed"], response.text
        wait_for(
            lambda: stored_count(clickhouse, settings, customer.customer_id) >= expected,
            timeout_s=60,
            what=f"{expected} stored events",
        )

    return ingest


def period_around(t: int) -> dict[str, int]:
    return {"start": t - HOUR, "end": t + HOUR}


def closed_month(now: int | None = None) -> BillingPeriod:
    """The last month that ended before `now` (default: the wall clock):
    closed for the live API (its grace is 0). Live runs bill whole calendar
    months only, as the billing job does."""
    return BillingPeriod.month_before(now_ms() if now is None else now)


def as_body(period: BillingPeriod) -> dict[str, int]:
    return {"start": period.start_ms, "end": period.end_ms}


def late_in(period: BillingPeriod, hours: int = 4) -> int:
    """A moment `hours` before the period's end."""
    return period.end_ms + 1 - hours * HOUR


def test_closed_month_usage_lands_in_the_billed_month_on_every_day():
    """For every hour of 2027 as "now": the closed month's usage (late_in, and
    the month before it) lies in the month billed and is written straight to
    ClickHouse, where it is stored whatever its age. The API would refuse it
    from the 30th of a 31-day month on, which the straight write avoids."""
    refused_days = set()
    start = datetime(2027, 1, 1, tzinfo=timezone.utc)
    for hour in range(365 * 24):
        instant = start + timedelta(hours=hour)
        now = int(instant.timestamp() * 1000)
        month = closed_month(now)
        before = BillingPeriod.month_before(month.start_ms)
        for t, period in ((late_in(month), month), (before.start_ms + HOUR, before)):
            assert period.start_ms <= t <= period.end_ms and period.end_ms < now, (instant, t)
            assert not through_api(t, now), (instant, t)
        first_hour = (instant.day, instant.hour) == (1, 0)
        assert through_api(now - HOUR, now) is not first_hour  # this month's usage goes to the API
        event = make_event("c", timestamp=late_in(month), properties={"bytes": 100_000})
        assert validate_event(event, now_ms=event["timestamp"]).timestamp == event["timestamp"]  # insert_events
        try:
            validate_event(event, now_ms=now)
        except InvalidEvent:
            refused_days.add(instant.date())
    # The days the tests failed on when they posted the closed month's usage.
    assert {date(2027, 1, 31), date(2027, 3, 31), date(2027, 12, 31)} <= refused_days
    assert date(2027, 2, 28) not in refused_days


# -- dry run (the session API has no Stripe key) ---------------------------------


def test_dry_run_plans_the_contract_operations(api, customer, ingest, redis):
    t = now_ms() - HOUR
    events = [make_event(customer.customer_id, timestamp=t, properties={}) for _ in range(14_998)]
    events += [make_event(customer.customer_id, timestamp=t, properties={"bytes": b}) for b in (1000, 2500)]
    events += [make_event(customer.customer_id, event_type="storage", timestamp=t, properties={"gb_stored": 100})]
    ingest(customer, events)
    body = {"customer_id": customer.customer_id, **period_around(t)}

    response = api.post("/v1/billing/run", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    run = response.json()
    calculated = api.post("/v1/invoices/calculate", json=body, headers=customer.headers).json()
    assert {**run["invoice"], "generated_at": None} == {**calculated, "generated_at": None}

    stripe = run["stripe_operations"]
    key = billing_key(customer.customer_id, body["start"], body["end"])
    assert stripe["mode"] == "dry_run"
    assert stripe["summary"] == {
        "total_amount_cents": 2154, "currency": "usd", "line_items": 3, "idempotency_key": key,
        "stripe_customer_id": None, "stripe_invoice_id": None, "status": "dry_run", "replayed": False,
    }  # fmt: skip
    ops = stripe["operations"]
    assert [op["step"] for op in ops] == [1, 2, 3, 4, 5, 6]
    assert [(op["name"], op["action"], op["idempotency_key"]) for op in ops] == [
        ("invoice", "stripe.invoices.create", f"{key}:invoice"),
        ("item:api_calls", "stripe.invoiceItems.create", f"{key}:item:api_calls"),
        ("item:bandwidth", "stripe.invoiceItems.create", f"{key}:item:bandwidth"),
        ("item:storage_peak", "stripe.invoiceItems.create", f"{key}:item:storage_peak"),
        ("finalize", "stripe.invoices.finalizeInvoice", f"{key}:finalize"),
        ("send", "stripe.invoices.sendInvoice", f"{key}:send"),
    ]
    assert [(op["payload"]["amount"], op["payload"]["currency"]) for op in ops[1:4]] == [
        (1150, "usd"), (4, "usd"), (1000, "usd"),  # 15,000 calls -> 11.50; 3,500 bytes -> 0.04; 100 GB -> 10.00
    ]  # fmt: skip
    assert {op["payload"]["customer"] for op in ops[:4]} == {"{customer.id}"}  # not in Stripe yet
    assert {op["payload"]["invoice"] for op in ops[1:]} == {"{invoice.id}"}
    assert ops[0]["payload"]["metadata"]["meterflow_invoice_id"] == calculated["invoice_id"]
    assert not redis.exists(f"billing:{key}")  # a dry run records nothing

    # Same period again: same keys and amounts; a known Stripe customer shows in the payloads.
    redis.hset("stripe:customers", customer.customer_id, "cus_known")
    again = api.post("/v1/billing/run", json=body, headers=customer.headers).json()["stripe_operations"]
    assert [op["idempotency_key"] for op in again["operations"]] == [op["idempotency_key"] for op in ops]
    assert [op["payload"].get("amount") for op in again["operations"]] == [op["payload"].get("amount") for op in ops]
    assert {op["payload"]["customer"] for op in again["operations"][:4]} == {"cus_known"}
    assert again["summary"]["stripe_customer_id"] == "cus_known"


def test_dry_run_without_usage_plans_nothing(api, customer):
    body = {"customer_id": customer.customer_id, "start": 0, "end": now_ms()}
    run = api.post("/v1/billing/run", json=body, headers=customer.headers).json()
    assert run["invoice"]["lines"] == [] and run["invoice"]["subtotal"] == 0
    assert run["stripe_operations"]["operations"] == []
    summary = run["stripe_operations"]["summary"]
    assert (summary["total_amount_cents"], summary["line_items"], summary["status"]) == (0, 0, "no_usage")
    assert summary["idempotency_key"] == billing_key(customer.customer_id, 0, body["end"])


def test_refusals(api, customer):
    body = {"customer_id": customer.customer_id, "start": 0, "end": now_ms()}
    missing = api.post("/v1/billing/run", json=body)
    assert missing.status_code == 401 and missing.json()["error"]
    assert api.post("/v1/billing/run", json=body, headers={"X-API-Key": "mf_nope"}).status_code == 401
    other = api.post("/v1/billing/run", json={**body, "customer_id": "someone-else"}, headers=customer.headers)
    assert other.status_code == 403 and other.json()["error"]
    backwards = api.post("/v1/billing/run", json={**body, "start": 10, "end": 5}, headers=customer.headers)
    assert backwards.status_code == 400 and "start" in backwards.json()["error"]
    shapeless = api.post("/v1/billing/run", json={"customer_id": customer.customer_id}, headers=customer.headers)
    assert shapeless.status_code == 422 and "start" in shapeless.json()["error"]


# -- live (a second API process with a Stripe key, Stripe stood in for) -------------


@dataclasses.dataclass
class Live:
    api: httpx.Client
    stripe: StripeStandIn
    mapped_customer_id: str  # in STRIPE_CUSTOMER_MAP, as CONFIGURED
    settings: Settings  # the live API's, for a billing job run in this process

    def run(self, customer: Customer, period: dict[str, int]) -> tuple[httpx.Response, list]:
        """Run billing; the response and the requests Stripe received meanwhile."""
        mark = len(self.stripe.requests)
        body = {"customer_id": customer.customer_id, **period}
        response = self.api.post("/v1/billing/run", json=body, headers=customer.headers)
        return response, self.stripe.requests[mark:]


@pytest.fixture(scope="module")
def live(stack, settings) -> Iterator[Live]:
    mapped = f"cust-mapped-{uuid.uuid4().hex[:12]}"
    with StripeStandIn() as stand_in:
        with live_api(
            stack, settings, stand_in, stripe_customer_map=json.dumps({mapped: CONFIGURED}), billing_grace_hours=0.0
        ) as live_settings:
            url = f"http://{live_settings.api_host}:{live_settings.api_port}"
            with httpx.Client(base_url=url, timeout=60) as client:
                yield Live(client, stand_in, mapped, live_settings)


def usage_events(customer_id: str, t: int) -> list[dict]:
    """2 calls (free tier: a 0-cent line), 200,000 bytes (200 cents), 12.345 GB peak (123 cents)."""
    return [make_event(customer_id, timestamp=t, properties={"bytes": 100_000}) for _ in range(2)] + [
        make_event(customer_id, event_type="storage", timestamp=t, properties={"gb_stored": 12.345})
    ]


def posts(requests: list) -> list[tuple[str, int]]:
    return [(r.path, r.status) for r in requests if r.method == "POST"]


def test_live_run_sends_the_plan_through_the_sdk_retries_a_lost_answer_and_never_bills_twice(
    live, customer, ingest, redis
):
    month = closed_month()
    t = late_in(month)
    ingest(customer, usage_events(customer.customer_id, t))
    period = as_body(month)
    key = billing_key(customer.customer_id, period["start"], period["end"])
    # The first item's first answer is lost on the way back (Stripe created the item and saved its answer).
    live.stripe.fail("POST", "/v1/invoiceitems", commit=True)

    response, sent = live.run(customer, period)
    assert response.status_code == 200, response.text
    assert (sent[0].method, sent[0].path) == ("GET", "/v1/invoices/search")  # billed before? (no)
    sent = sent[1:]
    run = response.json()
    summary = run["stripe_operations"]["summary"]
    cus, invoice_id = summary["stripe_customer_id"], summary["stripe_invoice_id"]
    assert live.stripe.objects[cus]["metadata"] == {"meterflow_customer_id": customer.customer_id}
    assert live.stripe.objects[invoice_id]["metadata"]["meterflow_idempotency_key"] == key
    assert posts(sent) == [
        ("/v1/customers", 200),
        ("/v1/invoices", 200),
        ("/v1/invoiceitems", 500),
        ("/v1/invoiceitems", 200),  # the SDK's retry, same key: Stripe replays the saved answer
        ("/v1/invoiceitems", 200),
        ("/v1/invoiceitems", 200),
        (f"/v1/invoices/{invoice_id}/finalize", 200),
        (f"/v1/invoices/{invoice_id}/send", 200),
    ]
    assert {r.authorization for r in sent} == {f"Bearer {STRIPE_KEY}"}
    assert [r.idempotency_key for r in sent] == [
        customer_key(customer.customer_id), f"{key}:invoice", f"{key}:item:api_calls", f"{key}:item:api_calls",
        f"{key}:item:bandwidth", f"{key}:item:storage_peak", f"{key}:finalize", f"{key}:send",
    ]  # fmt: skip
    assert sent[2].form == sent[3].form  # the retry is the same request
    assert sent[0].form["metadata[meterflow_customer_id]"] == customer.customer_id
    create = sent[1].form
    assert (create["customer"], create["currency"], create["collection_method"]) == (cus, "usd", "send_invoice")
    assert (create["auto_advance"], create["metadata[meterflow_idempotency_key]"]) == ("false", key)
    items = [r.form for r in sent[3:6]]
    assert [(i["amount"], i["currency"], i["invoice"], i["customer"]) for i in items] == [
        ("0", "usd", invoice_id, cus),
        ("200", "usd", invoice_id, cus),
        ("123", "usd", invoice_id, cus),
    ]
    assert items[0]["period[start]"] == str(period["start"] // 1000)
    assert live.stripe.objects[invoice_id]["status"] == "open" and live.stripe.objects[invoice_id]["sent"]
    assert len(live.stripe.items_of(invoice_id)) == 3  # the retried item exists once

    assert run["stripe_operations"]["mode"] == "live"
    assert summary == {
        "total_amount_cents": 323, "currency": "usd", "line_items": 3, "idempotency_key": key,
        "stripe_customer_id": cus, "stripe_invoice_id": invoice_id, "status": "sent",
        "replayed": False,
    }  # fmt: skip
    assert [op["payload"].get("invoice") for op in run["stripe_operations"]["operations"]] == [None] + [invoice_id] * 5
    assert run["invoice"]["subtotal"] == 3.23
    record = redis.hgetall(f"billing:{key}")
    assert (record[b"status"], record[b"stripe_invoice_id"]) == (b"sent", invoice_id.encode())
    assert redis.hget("stripe:customers", customer.customer_id) == cus.encode()

    # A re-run (also after Stripe forgot the keys, and with more usage since) sends nothing.
    live.stripe.forget_idempotency_keys()
    ingest(customer, usage_events(customer.customer_id, t) + usage_events(customer.customer_id, t))
    again, sent_again = live.run(customer, period)
    assert again.status_code == 200 and sent_again == []
    replay = again.json()
    assert replay["stripe_operations"]["summary"] == {**summary, "replayed": True}
    assert replay["stripe_operations"]["operations"] == run["stripe_operations"]["operations"]
    assert replay["invoice"] == run["invoice"]  # the invoice as billed, not as it would be now

    # Part of the billed month is refused; nothing reaches Stripe.
    inside, sent_inside = live.run(customer, {"start": period["start"] + 1, "end": period["end"] - 1})
    assert inside.status_code == 409 and "whole calendar month" in inside.json()["error"] and sent_inside == []

    # Another month is billed, to the stored Stripe customer.
    before = BillingPeriod.month_before(month.start_ms)
    calls = [make_event(customer.customer_id, timestamp=before.start_ms + HOUR, properties={}) for _ in range(1500)]
    ingest(customer, calls)
    other, other_period = live.run(customer, as_body(before))
    assert other.status_code == 200, other.text
    assert posts(other_period)[0] == ("/v1/invoices", 200)
    assert [r.form["customer"] for r in other_period if r.path == "/v1/invoices"] == [cus]


def test_a_5xx_stripe_saved_is_retried_under_a_new_key_after_asking_stripe(live, customer, ingest, redis):
    period = as_body(closed_month())
    ingest(customer, usage_events(customer.customer_id, late_in(closed_month())))
    key = billing_key(customer.customer_id, period["start"], period["end"])
    # Stripe answers the first item with a 500 and saves it under the key: the same key would replay it.
    live.stripe.fail("POST", "/v1/invoiceitems")

    failed, sent = live.run(customer, period)
    assert failed.status_code == 503, failed.text
    assert posts(sent)[-1] == ("/v1/invoiceitems", 500)  # Stripe-Should-Retry: false, the SDK does not retry
    invoice_id = redis.hget(f"billing:{key}", "stripe_invoice_id").decode()
    assert live.stripe.items_of(invoice_id) == []

    resumed, sent = live.run(customer, period)
    assert resumed.status_code == 200, resumed.text
    assert [(r.method, r.path, r.idempotency_key) for r in sent] == [
        ("GET", "/v1/invoiceitems", None),  # did the failed attempt create the item after all?
        ("GET", f"/v1/invoices/{invoice_id}", None),
        ("POST", "/v1/invoiceitems", f"{key}:item:api_calls:retry1"),  # a new key: the old one replays the 500
        ("POST", "/v1/invoiceitems", f"{key}:item:bandwidth"),
        ("POST", "/v1/invoiceitems", f"{key}:item:storage_peak"),
        ("POST", f"/v1/invoices/{invoice_id}/finalize", f"{key}:finalize"),
        ("POST", f"/v1/invoices/{invoice_id}/send", f"{key}:send"),
    ]
    assert {r.status for r in sent} == {200}
    assert sorted(item["amount"] for item in live.stripe.items_of(invoice_id)) == [0, 123, 200]
    # The item keeps its step's key in its metadata, whatever the request's key was.
    assert {i["metadata"]["meterflow_idempotency_key"] for i in live.stripe.items_of(invoice_id)} == {
        f"{key}:item:api_calls", f"{key}:item:bandwidth", f"{key}:item:storage_peak",
    }  # fmt: skip


def test_a_customer_created_although_every_answer_failed_is_found_not_created_again(live, customer, ingest, redis):
    period = as_body(closed_month())
    ingest(customer, usage_events(customer.customer_id, late_in(closed_month())))
    # Stripe creates the customer, but all three answers (1 + 2 SDK retries) are 500s.
    live.stripe.fail("POST", "/v1/customers", times=3, commit=True)
    failed, sent = live.run(customer, period)
    assert failed.status_code == 503, failed.text
    assert posts(sent) == [("/v1/customers", 500)] * 3
    (created,) = [o for o in live.stripe.objects.values()
                  if o["object"] == "customer" and o["metadata"] == {"meterflow_customer_id": customer.customer_id}]  # fmt: skip

    again, sent = live.run(customer, period)
    assert again.status_code == 200, again.text
    assert [(r.method, r.path) for r in sent][:2] == [("GET", "/v1/invoices/search"), ("GET", "/v1/customers/search")]
    assert posts(sent)[0] == ("/v1/invoices", 200)  # no second customer
    assert again.json()["stripe_operations"]["summary"]["stripe_customer_id"] == created["id"]
    assert redis.hget("stripe:customers", customer.customer_id) == created["id"].encode()


def test_with_the_record_lost_and_the_keys_forgotten_a_rerun_finds_the_stripe_invoice(live, customer, ingest, redis):
    period = as_body(closed_month())
    ingest(customer, usage_events(customer.customer_id, late_in(closed_month())))
    key = billing_key(customer.customer_id, period["start"], period["end"])
    first, _ = live.run(customer, period)
    assert first.status_code == 200, first.text
    summary = first.json()["stripe_operations"]["summary"]
    invoice_id = summary["stripe_invoice_id"]

    redis.delete(f"billing:{key}")  # Redis lost the progress record
    live.stripe.forget_idempotency_keys()  # and more than 24 hours passed
    again, sent = live.run(customer, period)
    assert again.status_code == 200, again.text
    assert sent[0].method == "GET" and sent[0].path == "/v1/invoices/search"
    assert sent[0].query["query"] == f"metadata['meterflow_invoice_id']:'{first.json()['invoice']['invoice_id']}'"
    # Nothing new is billed: no invoice, no item; the open invoice is only sent again.
    assert posts(sent) == [(f"/v1/invoices/{invoice_id}/send", 200)]
    billed = [o for o in live.stripe.objects.values() if o["object"] == "invoice"
              and o["metadata"].get("meterflow_idempotency_key") == key]  # fmt: skip
    assert [o["id"] for o in billed] == [invoice_id] and len(live.stripe.items_of(invoice_id)) == 3
    rebuilt = again.json()["stripe_operations"]["summary"]
    assert (rebuilt["stripe_invoice_id"], rebuilt["status"], rebuilt["total_amount_cents"]) == (invoice_id, "sent", 323)

    # Paid in the meantime: nothing is sent at all.
    live.stripe.objects[invoice_id]["status"] = "paid"
    redis.delete(f"billing:{key}")
    live.stripe.forget_idempotency_keys()
    paid, sent = live.run(customer, period)
    assert paid.status_code == 200, paid.text
    assert posts(sent) == []


def test_an_interrupted_run_resumes_days_later_without_billing_twice(live, customer, ingest, redis):
    period = as_body(closed_month())
    ingest(customer, usage_events(customer.customer_id, late_in(closed_month())))
    key = billing_key(customer.customer_id, period["start"], period["end"])
    # Stripe creates the first item but every answer is lost (3 attempts: 1 + 2 SDK retries).
    live.stripe.fail("POST", "/v1/invoiceitems", times=3, commit=True)

    failed, sent = live.run(customer, period)
    assert failed.status_code == 503, failed.text
    error = failed.json()["error"]
    assert error.startswith("Stripe unavailable during stripe.invoiceItems.create (item:api_calls)") and "resume" in error
    assert failed.headers["Retry-After"] == "5"
    assert posts(sent)[-3:] == [("/v1/invoiceitems", 500)] * 3
    invoice_id = redis.hget(f"billing:{key}", "stripe_invoice_id").decode()
    assert len(live.stripe.items_of(invoice_id)) == 1  # billed at Stripe, not in the record
    record = redis.hgetall(f"billing:{key}")
    assert record[b"status"] == b"in_progress" and b"step:invoice" in record and b"step:item:api_calls" not in record

    live.stripe.forget_idempotency_keys()  # days later
    resumed, sent = live.run(customer, period)
    assert resumed.status_code == 200, resumed.text
    assert [(r.method, r.path) for r in sent] == [
        ("GET", "/v1/invoiceitems"),  # what did Stripe carry out?
        ("GET", f"/v1/invoices/{invoice_id}"),
        ("POST", "/v1/invoiceitems"),
        ("POST", "/v1/invoiceitems"),
        ("POST", f"/v1/invoices/{invoice_id}/finalize"),
        ("POST", f"/v1/invoices/{invoice_id}/send"),
    ]
    assert sent[0].query["invoice"] == invoice_id
    new_items = [r.idempotency_key for r in sent if r.path == "/v1/invoiceitems" and r.method == "POST"]
    assert new_items == [f"{key}:item:bandwidth", f"{key}:item:storage_peak"]
    assert sorted(item["amount"] for item in live.stripe.items_of(invoice_id)) == [0, 123, 200]
    assert live.stripe.objects[invoice_id]["amount_due"] == 323
    summary = resumed.json()["stripe_operations"]["summary"]
    assert (summary["status"], summary["stripe_invoice_id"], summary["replayed"]) == ("sent", invoice_id, False)


def test_configured_customer_and_a_concurrent_run(live, api, ingest, redis):
    response = api.post("/v1/admin/keys", json={"customer_id": live.mapped_customer_id, "name": "test"})
    mapped = Customer(live.mapped_customer_id, response.json()["api_key"])
    period = as_body(closed_month())
    ingest(mapped, usage_events(mapped.customer_id, late_in(closed_month())))
    lock = f"billing:{billing_key(mapped.customer_id, period['start'], period['end'])}:lock"

    redis.set(lock, "another-run", px=60_000)
    busy, sent = live.run(mapped, period)
    assert busy.status_code == 409 and "in progress" in busy.json()["error"]
    assert sent == []

    redis.delete(lock)
    done, sent = live.run(mapped, period)
    assert done.status_code == 200, done.text
    assert posts(sent)[0] == ("/v1/invoices", 200)  # no customer to create
    assert {r.form["customer"] for r in sent if "customer" in r.form} == {CONFIGURED}
    assert done.json()["stripe_operations"]["summary"]["stripe_customer_id"] == CONFIGURED
    assert not redis.exists(lock)


def test_a_stripe_refusal_is_502_and_bills_nothing(live, customer, ingest, redis):
    period = as_body(closed_month())
    ingest(customer, usage_events(customer.customer_id, late_in(closed_month())))
    key = billing_key(customer.customer_id, period["start"], period["end"])
    live.stripe.fail(
        "POST", "/v1/invoices", status=400, error_type="invalid_request_error", message="No such customer: 'cus_gone'"
    )

    refused, sent = live.run(customer, period)
    assert refused.status_code == 502
    assert refused.json()["error"] == "Stripe refused stripe.invoices.create (invoice): No such customer: 'cus_gone'"
    assert posts(sent)[-1] == ("/v1/invoices", 400)  # a 4xx is not retried
    assert not redis.exists(f"billing:{key}")  # nothing billed: the next run plans afresh
    assert redis.zcard(f"billing:periods:{customer.customer_id}") == 0  # nor is the period claimed

    again, sent = live.run(customer, period)
    assert again.status_code == 200 and again.json()["stripe_operations"]["summary"]["status"] == "sent"


def test_a_live_run_of_a_period_still_open_is_refused(live, customer, ingest, redis):
    t = now_ms() - HOUR
    ingest(customer, usage_events(customer.customer_id, t))
    today = datetime.now(timezone.utc).date()
    this_month = BillingPeriod.month(today.year, today.month)
    # Ending in the future, it would claim usage that does not exist yet (and keep the job from billing it).
    open_period, sent = live.run(customer, as_body(this_month))
    assert open_period.status_code == 409 and "closes at" in open_period.json()["error"], open_period.text
    assert sent == [] and not redis.exists(f"billing:periods:{customer.customer_id}")


def test_a_live_run_of_less_than_a_month_is_refused_and_a_dry_run_of_it_is_not(live, api, customer, ingest, redis):
    month = closed_month()
    t = late_in(month)
    ingest(customer, usage_events(customer.customer_id, t))
    last_day = {"start": month.end_ms + 1 - 24 * HOUR, "end": month.end_ms}
    # A closed day of the month: its claim would make the job's claim of the month overlap, forever.
    for period in (last_day, {"start": month.start_ms, "end": month.end_ms - 1}, period_around(t)):
        refused, sent = live.run(customer, period)
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert "whole calendar month" in error and "--period YYYY-MM" in error and "dry runs" in error
        assert sent == [] and not redis.exists(f"billing:periods:{customer.customer_id}")
    dry = api.post("/v1/billing/run", json={"customer_id": customer.customer_id, **last_day}, headers=customer.headers)
    assert dry.status_code == 200 and dry.json()["stripe_operations"]["summary"]["status"] == "dry_run", dry.text


def test_an_api_run_of_a_month_then_the_job_of_that_month_bill_stripe_once(live, customer, ingest, redis):
    month = closed_month()
    ingest(customer, usage_events(customer.customer_id, late_in(month)))
    billed, _ = live.run(customer, as_body(month))
    assert billed.status_code == 200, billed.text
    stripe_invoice_id = billed.json()["stripe_operations"]["summary"]["stripe_invoice_id"]

    clients = Clients.connect(live.settings)
    try:
        mark = len(live.stripe.requests)
        report = BillingJob(clients).run(month, customers={customer.customer_id})
    finally:
        clients.close()
    assert report.ok, report.customers
    (closed,) = report.customers
    assert (closed.status, closed.error) == ("sent", None)
    assert posts(live.stripe.requests[mark:]) == []  # the job replayed the API's record
    invoices = [o for o in live.stripe.objects.values()
                if o["object"] == "invoice" and o["metadata"].get("meterflow_customer_id") == customer.customer_id]  # fmt: skip
    assert [o["id"] for o in invoices] == [stripe_invoice_id]
    assert InvoiceStore(redis).load(closed.invoice_id).get("stripe_invoice_id") == stripe_invoice_id


def test_periods_billed_before_claims_existed_are_claimed(live, api, customer, ingest, redis):
    """Stored invoices and live records written before `billing:periods:<customer>`
    existed count as billed: an overlapping month is refused, Stripe untouched."""
    month = closed_month()
    days = BillingPeriod(month.start_ms, month.start_ms + 7 * 24 * HOUR - 1)  # the month's first week
    stored_only, record_only = customer, new_customer(api)
    for c in (stored_only, record_only):
        ingest(c, usage_events(c.customer_id, late_in(month)))
        assert not redis.exists(f"billing:periods:{c.customer_id}")
    old = build_invoice(stored_only.customer_id, days.start_ms, days.end_ms, {"storage_peak": Decimal(1)},
                        catalog_by_code(), pricing_by_code(), "2026-01-01T00:00:00+00:00")  # fmt: skip
    assert InvoiceStore(redis).create_draft(old, [])
    # A progress record as a live API run wrote it (the invoice as the API renders it).
    record = {"customer_id": record_only.customer_id, "period": {"start": days.start_ms, "end": days.end_ms}}
    redis.hset(f"billing:{billing_key(record_only.customer_id, days.start_ms, days.end_ms)}",
               mapping={"invoice": json.dumps(record), "status": "sent"})  # fmt: skip

    for c in (stored_only, record_only):
        refused, sent = live.run(c, as_body(month))
        assert refused.status_code == 409, refused.text
        covering = invoice_id_for(c.customer_id, days.start_ms, days.end_ms)
        assert "overlaps" in refused.json()["error"] and covering in refused.json()["error"]
        assert [r for r in sent if r.method == "POST"] == []
        assert redis.zrange(f"billing:periods:{c.customer_id}", 0, -1) == [f"{days.start_ms}:{days.end_ms}".encode()]


def test_a_month_beyond_stripes_amount_limit_is_422_and_nothing_is_sent(live, api, customer, ingest, redis):
    month = closed_month()
    # 10,000,000 GB stored: $1,000,000.00, one cent over what Stripe takes per item.
    big = [make_event(customer.customer_id, event_type="storage", timestamp=late_in(month), properties={"gb_stored": 10_000_000})]
    ingest(customer, big)
    refused, sent = live.run(customer, as_body(month))
    assert refused.status_code == 422, refused.text
    assert "100000000 cents exceeds Stripe's limit of 99999999 cents" in refused.json()["error"]
    assert sent == [] and not redis.exists(f"billing:periods:{customer.customer_id}")
    dry = api.post("/v1/billing/run", json={"customer_id": customer.customer_id, **as_body(month)}, headers=customer.headers)
    assert dry.status_code == 422 and "Stripe's limit" in dry.json()["error"], dry.text


def test_an_invoice_stored_as_a_dry_run_before_live_only_closing_reads_back(api, customer, redis):
    month = closed_month()
    old = build_invoice(customer.customer_id, month.start_ms, month.end_ms, {"storage_peak": Decimal(3)},
                        catalog_by_code(), pricing_by_code(), "2026-01-01T00:00:00+00:00")  # fmt: skip
    store = InvoiceStore(redis)
    assert store.create_draft(old, [])
    store.set_fields(old.invoice_id, billing_mode="dry_run")  # what the job wrote before

    listed = api.get(f"/v1/invoices?customer_id={customer.customer_id}", headers=customer.headers)
    assert listed.status_code == 200, listed.text
    assert [(i["invoice_id"], i["billing_mode"]) for i in listed.json()["invoices"]] == [(old.invoice_id, None)]
    one = api.get(f"/v1/invoices/{old.invoice_id}", headers=customer.headers)
    assert one.status_code == 200 and one.json()["billing_mode"] is None, one.text


def test_live_run_without_usage_calls_stripe_not_at_all(live, customer):
    response, sent = live.run(customer, as_body(BillingPeriod.month_before(closed_month().start_ms)))
    assert response.status_code == 200, response.text
    stripe = response.json()["stripe_operations"]
    assert (stripe["mode"], stripe["operations"], stripe["summary"]["status"]) == ("live", [], "no_usage")
    assert sent == []
