"""Billing an invoice through Stripe, planned as data.

A billing run is an ordered list of Stripe operations computed from the
invoice alone: create a draft invoice, add one invoice item per line (the
line's subtotal in cents), finalize it, send it. The plan is the same for
the dry run (shown, nothing sent) and the live run (sent by `api.billing`),
so what a dry run shows is exactly what a live run would send.

Every key here is a pure function of its inputs: the run's idempotency key
of (customer, period), each step's key of that key and the step's name (not
its position, so a line that appears on a re-run cannot shift another
line's key), and the customer-creation key of the customer alone. Running
the same period twice therefore sends the same keys, and Stripe answers a
repeated key with the object it created the first time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from operators.invoices import Invoice, period_key
from operators.pricing import exact_arithmetic, to_cents

CURRENCY = "usd"
DAYS_UNTIL_DUE = 30
# Stripe takes at most this many cents (USD) per invoice item and per invoice.
STRIPE_MAX_AMOUNT_CENTS = 99_999_999

# Actions, named as in the contract (Stripe's Node SDK spelling).
CREATE_INVOICE = "stripe.invoices.create"
CREATE_INVOICE_ITEM = "stripe.invoiceItems.create"
FINALIZE_INVOICE = "stripe.invoices.finalizeInvoice"
SEND_INVOICE = "stripe.invoices.sendInvoice"

# Steps: stable names, the suffix of each step's idempotency key.
STEP_INVOICE = "invoice"
STEP_ITEM_PREFIX = "item:"  # + the line's key: its metric code, or adj:<invoice>:<metric>
STEP_FINALIZE = "finalize"
STEP_SEND = "send"

# Ids that exist only once an earlier call has created the object: a dry run
# shows these placeholders, a live run substitutes the real ids.
CUSTOMER_REF = "{customer.id}"
INVOICE_REF = "{invoice.id}"


class StripeAmountLimit(ValueError):
    """An invoice line, or the invoice, exceeds what Stripe accepts: sending
    it would fail halfway (some items created), so nothing is sent."""

    def __init__(self, invoice_id: str, what: str, amount_cents: int) -> None:
        self.amount_cents = amount_cents
        self.reason = (
            f"invoice {invoice_id}: {what} of {amount_cents} cents exceeds Stripe's limit of "
            f"{STRIPE_MAX_AMOUNT_CENTS} cents per invoice item and per invoice; nothing was sent to Stripe"
        )
        super().__init__(self.reason)


@dataclass(frozen=True, slots=True)
class StripeOperation:
    step: str
    action: str
    payload: Mapping[str, Any]  # Stripe's parameter names; path ids under "invoice"
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class BillingPlan:
    idempotency_key: str  # of the whole run: customer + period
    operations: tuple[StripeOperation, ...]  # empty for an invoice without lines
    total_amount_cents: int
    line_items: int
    currency: str = CURRENCY

    def resolved(self, refs: Mapping[str, str]) -> "BillingPlan":
        """The plan with placeholder ids (`CUSTOMER_REF`, `INVOICE_REF`) replaced."""
        return replace(self, operations=tuple(replace(op, payload=resolve(op.payload, refs)) for op in self.operations))

    def to_json(self) -> str:
        return json.dumps(
            {
                "idempotency_key": self.idempotency_key,
                "operations": [
                    {"step": op.step, "action": op.action, "payload": op.payload, "idempotency_key": op.idempotency_key}
                    for op in self.operations
                ],
                "total_amount_cents": self.total_amount_cents,
                "line_items": self.line_items,
                "currency": self.currency,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> "BillingPlan":
        data = json.loads(raw)
        return cls(
            idempotency_key=data["idempotency_key"],
            operations=tuple(StripeOperation(**op) for op in data["operations"]),
            total_amount_cents=data["total_amount_cents"],
            line_items=data["line_items"],
            currency=data["currency"],
        )


def resolve(payload: Mapping[str, Any], refs: Mapping[str, str]) -> dict[str, Any]:
    """`payload` with each top-level placeholder id (`CUSTOMER_REF`, `INVOICE_REF`) that `refs` knows replaced."""
    return {k: refs.get(v, v) if isinstance(v, str) else v for k, v in payload.items()}


@exact_arithmetic
def cents(amount: Decimal) -> int:
    """Dollars to whole cents, rounded half-up (a no-op for subtotals, which are rounded already)."""
    return int(to_cents(amount) * 100)


def billing_key(customer_id: str, start_ms: int, end_ms: int) -> str:
    """The run's idempotency key: the same customer and period always give the same key."""
    return "mf_bill_" + period_key(customer_id, start_ms, end_ms)[:32]


def step_key(run_key: str, step: str) -> str:
    return f"{run_key}:{step}"


def customer_key(customer_id: str) -> str:
    """Idempotency key for creating the Stripe customer of a MeterFlow customer."""
    return "mf_cus_" + hashlib.sha256(customer_id.encode()).hexdigest()[:32]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def ensure_within_stripe_limits(invoice: Invoice) -> None:
    """Raise StripeAmountLimit if a line's amount or the invoice's total, in
    cents, is beyond what Stripe takes (either sign: adjustments may credit)."""
    total = 0
    for line in invoice.lines:
        amount = cents(line.subtotal)
        if abs(amount) > STRIPE_MAX_AMOUNT_CENTS:
            raise StripeAmountLimit(invoice.invoice_id, f"line {line.line_key}", amount)
        total += amount
    if abs(total) > STRIPE_MAX_AMOUNT_CENTS:
        raise StripeAmountLimit(invoice.invoice_id, "the total", total)


def plan_billing(invoice: Invoice, stripe_customer: str) -> BillingPlan:
    """The ordered Stripe operations that bill `invoice` to `stripe_customer`
    (a Stripe customer id, or `CUSTOMER_REF` while the customer is not created).

    An invoice without lines (no usage) gets no operations: there is nothing
    to bill, and an empty Stripe invoice would only confuse the customer.
    An invoice Stripe would refuse for its size raises StripeAmountLimit.
    """
    ensure_within_stripe_limits(invoice)
    run_key = billing_key(invoice.customer_id, invoice.period_start, invoice.period_end)
    if not invoice.lines:
        return BillingPlan(run_key, (), total_amount_cents=0, line_items=0)

    def op(step: str, action: str, payload: dict[str, Any]) -> StripeOperation:
        return StripeOperation(step, action, payload, step_key(run_key, step))

    # Stripe takes periods in Unix seconds.
    period = {"start": invoice.period_start // 1000, "end": invoice.period_end // 1000}
    create = op(
        STEP_INVOICE,
        CREATE_INVOICE,
        {
            "customer": stripe_customer,
            "currency": CURRENCY,
            "collection_method": "send_invoice",
            "days_until_due": DAYS_UNTIL_DUE,
            "auto_advance": False,  # MeterFlow finalizes and sends explicitly
            "pending_invoice_items_behavior": "exclude",  # only the items below
            "description": f"Usage {_iso(invoice.period_start)} to {_iso(invoice.period_end)}",
            "metadata": {
                "meterflow_customer_id": invoice.customer_id,
                "meterflow_invoice_id": invoice.invoice_id,
                "meterflow_period_start": str(invoice.period_start),
                "meterflow_period_end": str(invoice.period_end),
                "meterflow_idempotency_key": run_key,
            },
        },
    )
    items = []
    for line in invoice.lines:
        step = STEP_ITEM_PREFIX + line.line_key
        metadata = {
            "meterflow_metric_code": line.metric_code,
            "meterflow_quantity": str(line.quantity),
            # lets a resumed run recognise an item Stripe created
            # although the answer was lost (see api.billing)
            "meterflow_idempotency_key": step_key(run_key, step),
        }
        description = f"{line.metric_name}: {line.quantity:,} {line.unit}"
        if line.adjusts is not None:  # late usage of an earlier, closed invoice
            metadata["meterflow_adjusts"] = line.adjusts
            description = f"{line.metric_name}: {line.quantity:+,} {line.unit} (adjusts {line.adjusts})"
        items.append(
            op(
                step,
                CREATE_INVOICE_ITEM,
                {
                    "customer": stripe_customer,
                    "invoice": INVOICE_REF,
                    "amount": cents(line.subtotal),
                    "currency": CURRENCY,
                    "description": description,
                    "period": period,
                    "metadata": metadata,
                },
            )
        )
    finalize = op(STEP_FINALIZE, FINALIZE_INVOICE, {"invoice": INVOICE_REF})
    send = op(STEP_SEND, SEND_INVOICE, {"invoice": INVOICE_REF})
    total = sum(item.payload["amount"] for item in items)
    return BillingPlan(run_key, (create, *items, finalize, send), total_amount_cents=total, line_items=len(items))


def parse_customer_map(raw: str) -> dict[str, str]:
    """`STRIPE_CUSTOMER_MAP`: a JSON object of MeterFlow customer id -> Stripe customer id."""
    if not raw.strip():
        return {}
    mapping = json.loads(raw)
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
    ):
        raise ValueError("STRIPE_CUSTOMER_MAP must be a JSON object of customer_id -> Stripe customer id")
    return mapping
