"""Reconciliation: does Stripe hold what MeterFlow billed?

For one period, every stored invoice is compared with its Stripe invoice:
the total (Stripe's `amount_due`), each item (matched by the step name in
its `meterflow_idempotency_key` metadata), and the status (sent -> open,
paid -> paid, failed -> still open or uncollectible). Stripe invoices that
carry the period in their metadata but that no stored invoice knows (a
second invoice for the same period, or one billed through
`POST /v1/billing/run` outside the job) are reported too. Read-only: it
changes nothing on either side.

    meterflow billing reconcile --period 2026-10
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stripe

from api.billing import mapped_customer, stripe_call, stripe_client
from api.deps import Clients
from api.invoice_store import FAILED, FINALIZED, PAID, SENT, InvoiceStore, StoredInvoice
from operators.billing import STEP_ITEM_PREFIX, cents
from operators.periods import BillingPeriod

# MeterFlow status -> the Stripe statuses that agree with it
STRIPE_STATUS = {SENT: {"open"}, PAID: {"paid"}, FAILED: {"open", "uncollectible"}}


@dataclass(frozen=True, slots=True)
class Difference:
    customer_id: str
    invoice_id: str | None  # MeterFlow's; None for a Stripe invoice MeterFlow does not know
    stripe_invoice_id: str | None
    kind: str  # not_in_stripe | total | item | status | unknown_in_meterflow
    meterflow: str
    stripe: str


@dataclass
class ReconcileReport:
    period: BillingPeriod
    checked: int = 0  # stored invoices compared
    differences: list[Difference] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"period {self.period.label}: {self.checked} invoices checked, {len(self.differences)} differences"]
        for d in self.differences:
            out.append(
                f"  {d.kind:<21} {d.customer_id:<28} {d.invoice_id or '-':<28} {d.stripe_invoice_id or '-':<22} "
                f"meterflow={d.meterflow} stripe={d.stripe}"
            )
        return out


def _expected_items(stored: StoredInvoice) -> dict[str, int]:
    return {STEP_ITEM_PREFIX + line.line_key: cents(line.subtotal) for line in stored.invoice.lines}


def _stripe_items(client: stripe.StripeClient, stripe_invoice_id: str) -> dict[str, int]:
    listed = stripe_call(
        "stripe.invoiceItems.list", lambda: client.v1.invoice_items.list({"invoice": stripe_invoice_id, "limit": 100})
    )
    items: dict[str, int] = {}
    for item in listed.auto_paging_iter():
        key = (item.to_dict().get("metadata") or {}).get("meterflow_idempotency_key", item.id)
        items[key.split(":", 1)[-1]] = item.amount
    return items


def _compare(client: stripe.StripeClient, stored: StoredInvoice) -> list[Difference]:
    stripe_id = stored.get("stripe_invoice_id")

    def diff(kind: str, ours: Any, theirs: Any) -> Difference:
        return Difference(stored.customer_id, stored.invoice_id, stripe_id, kind, str(ours), str(theirs))

    if stripe_id is None:
        return [diff("not_in_stripe", stored.status, "-")]
    invoice = stripe_call("stripe.invoices.retrieve", lambda: client.v1.invoices.retrieve(stripe_id))
    found = []
    if invoice.amount_due != stored.total_cents:
        found.append(diff("total", f"{stored.total_cents} cents", f"{invoice.amount_due} cents"))
    expected, actual = _expected_items(stored), _stripe_items(client, stripe_id)
    for step in sorted(set(expected) | set(actual)):
        if expected.get(step) != actual.get(step):
            found.append(diff("item", f"{step}={expected.get(step)}", f"{step}={actual.get(step)}"))
    if invoice.status not in STRIPE_STATUS.get(stored.status, set()):
        found.append(diff("status", stored.status, invoice.status))
    return found


def _unknown_in_meterflow(
    clients: Clients, client: stripe.StripeClient, period: BillingPeriod, customers: set[str], known: set[str]
) -> list[Difference]:
    found = []
    for customer_id in sorted(customers):
        stripe_customer = mapped_customer(clients, customer_id)
        if stripe_customer is None:
            continue
        listed = stripe_call(
            "stripe.invoices.list", lambda: client.v1.invoices.list({"customer": stripe_customer, "limit": 100})
        )
        for invoice in listed.auto_paging_iter():
            meta = invoice.to_dict().get("metadata") or {}
            same_period = meta.get("meterflow_period_start") == str(period.start_ms) and meta.get(
                "meterflow_period_end"
            ) == str(period.end_ms)
            if same_period and invoice.id not in known:
                found.append(
                    Difference(customer_id, None, invoice.id, "unknown_in_meterflow", "-", f"{invoice.amount_due} cents")
                )
    return found


def reconcile(clients: Clients, period: BillingPeriod) -> ReconcileReport:
    """Compare the period's stored invoices with Stripe (live mode only: needs STRIPE_API_KEY)."""
    if not clients.settings.stripe_api_key:
        raise ValueError("reconciliation compares with Stripe: set STRIPE_API_KEY (dry runs bill nothing)")
    client = stripe_client(clients)
    store = InvoiceStore(clients.redis)
    report = ReconcileReport(period)
    known: set[str] = set()
    customers: set[str] = set()
    for stored in store.of_period(period.start_ms, period.end_ms):
        customers.add(stored.customer_id)
        if stored.status not in (FINALIZED, SENT, PAID, FAILED):
            continue  # a draft is not billed yet: the job has not finished it
        report.checked += 1
        report.differences.extend(_compare(client, stored))
        if stripe_id := stored.get("stripe_invoice_id"):
            known.add(stripe_id)
    report.differences.extend(_unknown_in_meterflow(clients, client, period, customers, known))
    return report
