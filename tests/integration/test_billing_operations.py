"""Billing operations end to end, on the session's real services: simulated
history -> `meterflow billing run` -> PDFs in S3 -> signed webhooks to a real
receiver -> Stripe (stood in) marks the invoice paid -> late usage becomes an
adjustment on the next invoice -> reconciliation; plus the faults (Stripe
down mid-job, forged Stripe events). The job's isolation of customers, the
dry run and the scheduler: test_billing_job.py."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import date, timedelta
from typing import Iterator

import httpx
import orjson
import pytest
from pypdf import PdfReader

from meterflow import simulate
from meterflow.cli import main as cli_main
from meterflow.webhooks import SIGNATURE_HEADER, verify
from operators.invoices import invoice_id_for
from operators.periods import BillingPeriod, pdf_key
from tests.integration.conftest import Customer, make_event, stored_count, wait_for
from tests.integration.stripe_standin import StripeStandIn, live_api
from tests.integration.test_alert_webhook import Receiver

pytestmark = pytest.mark.integration

DAYS = 10  # of simulated history, ending yesterday (customers' local days)


def utc_today() -> date:
    return simulate.utc_today(int(time.time() * 1000))


@dataclasses.dataclass
class Month:
    """Two consecutive periods of simulated history, billed live through the stand-in."""

    settings: object  # the live API's settings (Stripe key, stand-in, grace 0)
    api: httpx.Client  # the live API
    stripe: StripeStandIn
    customers: list[Customer]
    first: BillingPeriod
    second: BillingPeriod

    def run_job(self, *args: str) -> subprocess.CompletedProcess:
        """`meterflow billing ...` as an operator runs it, configured like the live API."""
        env = {**os.environ, **self.settings.as_env()}  # type: ignore[attr-defined]
        return subprocess.run(
            [sys.executable, "-m", "meterflow.cli", "billing", *args], env=env, capture_output=True, text=True, timeout=300
        )


@pytest.fixture(scope="module")
def month(stack, settings, api, clickhouse) -> Iterator[Month]:
    prefix = f"bill{uuid.uuid4().hex[:8]}"
    env = settings.as_env()
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        assert cli_main(["simulate", "history", "--customers", "2", "--days", str(DAYS), "--events-per-day", "60",
                         "--prefix", prefix]) == 0  # fmt: skip
    finally:
        for name, value in old.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    profiles = simulate.make_profiles(2, 42, 60.0, prefix)
    expected = simulate.history(profiles, simulate.history_days(utc_today(), DAYS), 42).counts()
    for customer_id, count in expected.items():
        wait_for(lambda: stored_count(clickhouse, settings, customer_id) == count, timeout_s=90, what="history stored")
    customers = []
    for customer_id in sorted(expected):
        response = api.post("/v1/admin/keys", json={"customer_id": customer_id, "name": "billing-test"})
        customers.append(Customer(customer_id, response.json()["api_key"]))
    today = utc_today()
    first = BillingPeriod.days(today - timedelta(days=DAYS + 4), today - timedelta(days=6))
    second = BillingPeriod.days(today - timedelta(days=5), today - timedelta(days=1))
    with StripeStandIn() as stand_in, live_api(stack, settings, stand_in, billing_grace_hours=0.0) as live:
        with httpx.Client(base_url=f"http://{live.api_host}:{live.api_port}", timeout=60) as client:
            yield Month(live, client, stand_in, customers, first, second)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def register(api: httpx.Client, customer: Customer, url: str, events: list[str]) -> str:
    response = api.post(
        "/v1/webhooks", json={"customer_id": customer.customer_id, "url": url, "events": events},
        headers=customer.headers,
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["secret"]


def events_of(receiver: Receiver, customer_id: str) -> dict[str, dict]:
    """Received webhook events of one customer by event id (the last copy of each)."""
    out = {}
    for request in receiver.requests:
        body = orjson.loads(request["body"])
        if body["customer_id"] == customer_id:
            out[request["event_id"]] = {**body, "_headers": request["headers"], "_raw": request["body"]}
    return out


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def test_a_month_end_to_end(month: Month, receiver: Receiver, s3, settings, api, clickhouse):
    alice, bob = month.customers
    secrets = {c.customer_id: register(api, c, receiver.url, ["invoice.created", "invoice.finalized", "invoice.paid"])
               for c in month.customers}  # fmt: skip
    period = month.first.label.replace("_", "..")

    # 1. The billing run closes the period for both customers.
    run = month.run_job("run", "--period", period, "--customer", alice.customer_id, "--customer", bob.customer_id)
    assert run.returncode == 0, run.stdout + run.stderr
    invoices = {}
    for customer in month.customers:
        invoice_id = invoice_id_for(customer.customer_id, month.first.start_ms, month.first.end_ms)
        stored = month.api.get(f"/v1/invoices/{invoice_id}", headers=customer.headers)
        assert stored.status_code == 200, stored.text
        invoices[customer.customer_id] = body = stored.json()
        assert body["status"] == "sent" and body["billing_mode"] == "live"
        # The invoice is exactly what /v1/invoices/calculate says of the period.
        calculated = month.api.post(
            "/v1/invoices/calculate",
            json={"customer_id": customer.customer_id, "start": month.first.start_ms, "end": month.first.end_ms},
            headers=customer.headers,
        ).json()
        assert body["lines"] == calculated["lines"] and body["subtotal"] == calculated["subtotal"] > 0
        assert body["history"]["draft_at"] and body["history"]["finalized_at"] and body["history"]["sent_at"]

        # 2. Its PDF is in S3 where the issue says, and the presigned link serves it.
        assert body["pdf_key"] == pdf_key(customer.customer_id, month.first)
        s3.stat_object(settings.s3_bucket, body["pdf_key"])
        pdf = httpx.get(body["pdf_url"], timeout=10)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        text = pdf_text(pdf.content)
        assert invoice_id in text and customer.customer_id in text
        assert f"{calculated['subtotal']:,.2f}" in text

        # 3. Stripe holds one sent invoice with these amounts.
        stripe_invoice = month.stripe.objects[body["stripe_invoice_id"]]
        assert stripe_invoice["status"] == "open" and stripe_invoice["sent"]
        assert stripe_invoice["amount_due"] == body["total_amount_cents"] == round(calculated["subtotal"] * 100)

    # 4. Webhooks: created and finalized, signed with each endpoint's own secret.
    for customer in month.customers:
        invoice_id = invoices[customer.customer_id]["invoice_id"]
        wanted = {f"{invoice_id}.created", f"{invoice_id}.finalized"}
        got = wait_for(lambda: wanted <= set(events_of(receiver, customer.customer_id)) and events_of(receiver, customer.customer_id),
                       what="invoice webhooks")  # fmt: skip
        for event_id in wanted:
            event = got[event_id]
            assert verify(secrets[customer.customer_id], event["_headers"][SIGNATURE_HEADER], event["_raw"])
            assert event["data"]["invoice_id"] == invoice_id
        assert got[f"{invoice_id}.created"]["type"] == "invoice.created"

    # 5. The customer pays; Stripe tells MeterFlow; the invoice is paid and the customer hears of it.
    paid = invoices[alice.customer_id]
    assert month.stripe.pay(paid["stripe_invoice_id"]) == 200
    after = month.api.get(f"/v1/invoices/{paid['invoice_id']}", headers=alice.headers).json()
    assert after["status"] == "paid" and after["history"]["paid_at"]
    wait_for(lambda: f"{paid['invoice_id']}.paid" in events_of(receiver, alice.customer_id), what="invoice.paid webhook")
    listed = month.api.get("/v1/invoices", params={"customer_id": alice.customer_id, "status": "paid"}, headers=alice.headers)
    assert [i["invoice_id"] for i in listed.json()["invoices"]] == [paid["invoice_id"]]

    # 6. Running the period again changes nothing: no Stripe call, no webhook, same invoices.
    stripe_calls, deliveries = len(month.stripe.requests), len(receiver.requests)
    again = month.run_job("run", "--period", period, "--customer", alice.customer_id, "--customer", bob.customer_id)
    assert again.returncode == 0, again.stdout + again.stderr
    time.sleep(2)  # give a wrongly queued webhook time to arrive
    assert len(month.stripe.requests) == stripe_calls and len(receiver.requests) == deliveries
    assert month.api.get(f"/v1/invoices/{paid['invoice_id']}", headers=alice.headers).json()["status"] == "paid"

    # 7. Reconciliation agrees with Stripe.
    check = month.run_job("reconcile", "--period", period)
    assert check.returncode == 0 and "0 differences" in check.stdout, check.stdout + check.stderr


def test_late_usage_becomes_an_adjustment_on_the_next_invoice(month: Month, api, clickhouse, settings):
    alice = month.customers[0]
    first_id = invoice_id_for(alice.customer_id, month.first.start_ms, month.first.end_ms)
    if month.api.get(f"/v1/invoices/{first_id}", headers=alice.headers).status_code == 404:
        assert month.run_job("run", "--period", month.first.label.replace("_", ".."), "--customer", alice.customer_id).returncode == 0
    before = month.api.get(f"/v1/invoices/{first_id}", headers=alice.headers).json()

    # 500 MB of bandwidth for a day of the closed period, arriving now (accepted: < 30 days old).
    late_at = month.first.end_ms - 36 * 3_600_000
    late = [make_event(alice.customer_id, timestamp=late_at, properties={"bytes": 5_000_000}) for _ in range(100)]
    expected = stored_count(clickhouse, settings, alice.customer_id) + len(late)
    response = api.post("/v1/events", json={"events": late}, headers=alice.headers)
    assert response.status_code == 200 and response.json()["accepted"] == 100, response.text
    wait_for(lambda: stored_count(clickhouse, settings, alice.customer_id) == expected, what="late events stored")

    second = month.run_job("run", "--period", month.second.label.replace("_", ".."), "--customer", alice.customer_id)
    assert second.returncode == 0, second.stdout + second.stderr

    # The closed invoice did not change; the late usage is recorded against it ...
    closed = month.api.get(f"/v1/invoices/{first_id}", headers=alice.headers).json()
    assert (closed["lines"], closed["subtotal"], closed["status"]) == (before["lines"], before["subtotal"], before["status"])
    second_id = invoice_id_for(alice.customer_id, month.second.start_ms, month.second.end_ms)
    adjustments = {a["metric_code"]: a for a in closed["late_adjustments"]}
    assert set(adjustments) == {"api_calls", "bandwidth"}  # 100 calls and their bytes
    assert adjustments["api_calls"]["quantity"] == 100
    bandwidth = adjustments["bandwidth"]
    assert bandwidth["quantity"] == 500_000_000 and bandwidth["amount"] == 5000  # 5e8 bytes at $0.00001
    assert {a["applied_to"] for a in adjustments.values()} == {second_id}

    # ... and billed as a line of the next invoice, in the PDF and in Stripe too.
    nxt = month.api.get(f"/v1/invoices/{second_id}", headers=alice.headers).json()
    lines = {line["metric_code"]: line for line in nxt["lines"] if line.get("adjusts") == first_id}
    assert set(lines) == {"api_calls", "bandwidth"}
    assert (lines["bandwidth"]["quantity"], lines["bandwidth"]["subtotal"]) == (500_000_000, 5000)
    assert lines["api_calls"]["subtotal"] == adjustments["api_calls"]["amount"]
    assert nxt["subtotal"] == pytest.approx(sum(line["subtotal"] for line in nxt["lines"]))
    assert first_id in pdf_text(httpx.get(nxt["pdf_url"], timeout=10).content)
    items = month.stripe.items_of(nxt["stripe_invoice_id"])
    assert any(i["metadata"].get("meterflow_adjusts") == first_id and i["amount"] == 500_000 for i in items)

    # Running the job again records no second adjustment for the same late events.
    assert month.run_job("run", "--period", month.second.label.replace("_", ".."), "--customer", alice.customer_id).returncode == 0
    assert len(month.api.get(f"/v1/invoices/{first_id}", headers=alice.headers).json()["late_adjustments"]) == len(
        closed["late_adjustments"]
    )


def test_stripe_down_mid_job_resumes_without_billing_twice(month: Month):
    bob = month.customers[1]
    period = month.second
    invoice_id = invoice_id_for(bob.customer_id, period.start_ms, period.end_ms)
    # Stripe answers finalize with a 503 and saves it under the key: a retry with that key gets it again.
    month.stripe.fail("POST", "/v1/invoices/[^/]+/finalize", status=503)
    mark = len(month.stripe.requests)
    failed = month.run_job("run", "--period", period.label.replace("_", ".."), "--customer", bob.customer_id)
    assert failed.returncode == 1 and "ERROR" in failed.stdout, failed.stdout + failed.stderr
    stored = month.api.get(f"/v1/invoices/{invoice_id}", headers=bob.headers).json()
    assert stored["status"] == "finalized"  # MeterFlow's invoice is final; Stripe has a draft
    (finalize,) = [r for r in month.stripe.requests[mark:] if r.path.endswith("/finalize")]  # the SDK did not retry

    resumed = month.run_job("run", "--period", period.label.replace("_", ".."), "--customer", bob.customer_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (retried,) = [r for r in month.stripe.requests[mark:] if r.path.endswith("/finalize") and r.status == 200]
    assert retried.idempotency_key == f"{finalize.idempotency_key}:retry1"  # a new key, after asking Stripe
    stored = month.api.get(f"/v1/invoices/{invoice_id}", headers=bob.headers).json()
    assert stored["status"] == "sent"
    billed = [o for o in month.stripe.objects.values()
              if o["object"] == "invoice" and o["metadata"].get("meterflow_invoice_id") == invoice_id]  # fmt: skip
    assert [o["id"] for o in billed] == [stored["stripe_invoice_id"]]  # one Stripe invoice
    assert billed[0]["amount_due"] == stored["total_amount_cents"]


def test_reconciliation_reports_what_stripe_holds_differently(month: Month):
    bob = month.customers[1]
    invoice_id = invoice_id_for(bob.customer_id, month.first.start_ms, month.first.end_ms)
    period = month.first.label.replace("_", "..")
    if month.api.get(f"/v1/invoices/{invoice_id}", headers=bob.headers).status_code == 404:
        assert month.run_job("run", "--period", period, "--customer", bob.customer_id).returncode == 0
    stripe_id = month.api.get(f"/v1/invoices/{invoice_id}", headers=bob.headers).json()["stripe_invoice_id"]
    stripe_invoice = month.stripe.objects[stripe_id]
    stripe_invoice["status"] = "void"  # someone voided it in Stripe's dashboard
    stripe_invoice["amount_due"] += 100
    try:
        check = month.run_job("reconcile", "--period", period)
        assert check.returncode == 1, check.stdout + check.stderr
        assert "status" in check.stdout and invoice_id in check.stdout and "stripe=void" in check.stdout
        assert "total" in check.stdout
    finally:
        stripe_invoice["status"] = "open"
        stripe_invoice["amount_due"] -= 100


def test_stripe_events_must_be_signed(month: Month):
    alice = month.customers[0]
    invoice_id = invoice_id_for(alice.customer_id, month.first.start_ms, month.first.end_ms)
    forged = {"id": "evt_forged", "object": "event", "type": "invoice.payment_failed", "created": int(time.time()),
              "data": {"object": {"id": "in_x", "object": "invoice", "metadata": {"meterflow_invoice_id": invoice_id}}}}  # fmt: skip
    before = month.api.get(f"/v1/invoices/{invoice_id}", headers=alice.headers).json().get("status")
    assert month.stripe.send_event(forged, secret="whsec_wrong") == 400
    response = month.api.post("/v1/stripe/webhook", content=json.dumps(forged))  # no signature at all
    assert response.status_code == 400
    assert month.api.get(f"/v1/invoices/{invoice_id}", headers=alice.headers).json().get("status") == before
