"""Invoice calculation: POST /v1/invoices/calculate."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, model_serializer

from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.invoicing import calculate_invoice
from api.keys import ApiKeyRecord
from api.schemas import CustomerId, EpochMs, JsonDecimal
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

    @model_serializer(mode="wrap")
    def _omit_missing_breakdown(self, handler):  # only tiered and volume lines have one
        data = handler(self)
        if data.get("tier_breakdown") is None:
            data.pop("tier_breakdown", None)
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


@router.post("/calculate", response_model=InvoiceOut)
def calculate(body: PeriodRequest, key: ApiKeyDep, clients: ClientsDep) -> InvoiceOut:
    """A draft invoice for the period's usage (nothing is billed)."""
    validated_period(body, key)
    return invoice_out(calculate_invoice(clients, body.customer_id, body.start, body.end))
