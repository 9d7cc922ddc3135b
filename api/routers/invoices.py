"""Invoices: POST /v1/invoices/calculate (a draft for any period) and the
invoices the billing job stored (GET /v1/invoices, GET /v1/invoices/{id})."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, model_serializer

from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.invoice_store import STATUSES, InvoiceStore, StoredInvoice
from api.invoicing import calculate_invoice
from api.keys import ApiKeyRecord
from api.schemas import CustomerId, EpochMs, ExactJSONResponse, JsonDecimal
from operators.invoices import Invoice

router = APIRouter(prefix="/v1/invoices", tags=["invoices"])


class PeriodRequest(BaseModel):
    customer_id: CustomerId
    start: EpochMs
    end: EpochMs


class Period(BaseModel):
    start: int
    end: int


class TierBreakdown(BaseModel):
    tier: int
    from_quantity: JsonDecimal
    up_to: JsonDecimal | None
    quantity: JsonDecimal
    unit_price: JsonDecimal
    amount: JsonDecimal


class InvoiceLineOut(BaseModel):
    metric_code: str
    metric_name: str
    quantity: JsonDecimal
    unit: str
    unit_price_display: str
    subtotal: JsonDecimal
    tier_breakdown: list[TierBreakdown] | None = None
    adjusts: str | None = None  # adjustment lines: the closed invoice whose late usage this is

    @model_serializer(mode="wrap")
    def _omit_missing_optionals(self, handler):  # only tiered and volume lines have a breakdown
        data = handler(self)
        for name in ("tier_breakdown", "adjusts"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class InvoiceOut(BaseModel):
    invoice_id: str
    customer_id: str
    period: Period
    lines: list[InvoiceLineOut]
    subtotal: JsonDecimal
    currency: str
    generated_at: str
    status: str


def invoice_out(invoice: Invoice) -> InvoiceOut:
    return InvoiceOut(
        invoice_id=invoice.invoice_id,
        customer_id=invoice.customer_id,
        period=Period(start=invoice.period_start, end=invoice.period_end),
        lines=[
            InvoiceLineOut(
                metric_code=line.metric_code,
                metric_name=line.metric_name,
                quantity=line.quantity,
                unit=line.unit,
                unit_price_display=line.unit_price_display,
                subtotal=line.subtotal,
                tier_breakdown=[
                    TierBreakdown(
                        tier=t.tier,
                        from_quantity=t.from_quantity,
                        up_to=t.up_to,
                        quantity=t.quantity,
                        unit_price=t.unit_price,
                        amount=t.amount,
                    )
                    for t in line.tiers
                ]
                or None,
                adjusts=line.adjusts,
            )
            for line in invoice.lines
        ],
        subtotal=invoice.subtotal,
        currency=invoice.currency,
        generated_at=invoice.generated_at,
        status=invoice.status,
    )


def validated_period(body: PeriodRequest, key: ApiKeyRecord) -> None:
    ensure_own_customer(key, body.customer_id)
    if body.start > body.end:
        raise HTTPException(400, "start must not be after end")


@router.post("/calculate", response_model=InvoiceOut, response_class=ExactJSONResponse)
def calculate(body: PeriodRequest, key: ApiKeyDep, clients: ClientsDep) -> InvoiceOut:
    """A draft invoice for the period's usage (nothing is billed)."""
    validated_period(body, key)
    return invoice_out(calculate_invoice(clients, body.customer_id, body.start, body.end))


InvoiceStatus = Literal["draft", "finalized", "sent", "paid", "failed"]


class StatusHistory(BaseModel):
    draft_at: str | None = None
    finalized_at: str | None = None
    sent_at: str | None = None
    paid_at: str | None = None
    failed_at: str | None = None


class AdjustmentOut(BaseModel):
    adjustment_id: str
    invoice_id: str  # the closed invoice whose period the late usage belongs to
    metric_code: str
    quantity: JsonDecimal
    amount: JsonDecimal
    created_at: str
    applied_to: str | None  # the invoice that carries it; None until the next one is drafted


class StoredInvoiceOut(InvoiceOut):
    status: InvoiceStatus
    history: StatusHistory
    total_amount_cents: int
    pdf_url: str | None  # presigned, expires after INVOICE_URL_EXPIRY_S
    pdf_key: str | None
    billing_mode: Literal["live"] | None  # live once billed through Stripe
    stripe_invoice_id: str | None
    late_adjustments: list[AdjustmentOut]  # recorded against this invoice after it closed


class InvoiceListOut(BaseModel):
    invoices: list[StoredInvoiceOut]


def _stored_out(clients: ClientsDep, store: InvoiceStore, stored: StoredInvoice) -> StoredInvoiceOut:
    settings = clients.settings
    pdf_key = stored.get("pdf_key")
    pdf_url = None
    if pdf_key:
        pdf_url = clients.s3.presigned_get_object(
            settings.s3_bucket, pdf_key, expires=timedelta(seconds=settings.invoice_url_expiry_s)
        )
    late = store.adjustments(stored.customer_id, stored.json_field("late_adjustments", []))
    base = invoice_out(stored.invoice).model_dump()
    base["status"] = stored.status
    return StoredInvoiceOut(
        **base,
        history=StatusHistory(**{f"{s}_at": stored.get(f"{s}_at") for s in STATUSES}),
        total_amount_cents=stored.total_cents,
        pdf_url=pdf_url,
        pdf_key=pdf_key,
        # Invoices stored before live-only closing may say "dry_run": not billed, so None.
        billing_mode="live" if stored.get("billing_mode") == "live" else None,
        stripe_invoice_id=stored.get("stripe_invoice_id"),
        late_adjustments=[
            AdjustmentOut(
                adjustment_id=a.adjustment.adjustment_id,
                invoice_id=a.adjustment.invoice_id,
                metric_code=a.adjustment.metric_code,
                quantity=a.adjustment.quantity,
                amount=a.adjustment.amount,
                created_at=a.adjustment.created_at,
                applied_to=a.applied_to,
            )
            for a in late
        ],
    )


@router.get("", response_model=InvoiceListOut, response_class=ExactJSONResponse)
def list_invoices(
    customer_id: Annotated[CustomerId, Query()],
    key: ApiKeyDep,
    clients: ClientsDep,
    status: Annotated[InvoiceStatus | None, Query()] = None,
) -> InvoiceListOut:
    """The customer's stored invoices (made by the billing job), newest period first."""
    ensure_own_customer(key, customer_id)
    store = InvoiceStore(clients.redis)
    found = [s for s in store.of_customer(customer_id) if status is None or s.status == status]
    return InvoiceListOut(invoices=[_stored_out(clients, store, s) for s in found])


@router.get("/{invoice_id}", response_model=StoredInvoiceOut, response_class=ExactJSONResponse)
def get_invoice(invoice_id: str, key: ApiKeyDep, clients: ClientsDep) -> StoredInvoiceOut:
    """One stored invoice with its status history, a presigned link to its PDF
    and the late-usage adjustments recorded against it. Another customer's
    invoice answers 404, as an unknown one does."""
    store = InvoiceStore(clients.redis)
    stored = store.get(invoice_id)
    if stored is None or stored.customer_id != key.customer_id:
        raise HTTPException(404, "no such invoice")
    return _stored_out(clients, store, stored)
