"""Invoices from usage: one line per priced metric with usage, in Decimal.

Identity is a pure function of customer and period (`invoice_id_for`), so
computing the same period twice yields the same invoice and billing it
twice can be recognised (see api.billing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping, Sequence

from operators.metrics import Metric
from operators.pricing import Model, PricingRule, TierCharge, exact_arithmetic, price


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    metric_code: str
    metric_name: str
    quantity: Decimal
    unit: str
    unit_price_display: str
    subtotal: Decimal  # rounded half-up to cents
    tiers: tuple[TierCharge, ...] = ()
    # Set on adjustment lines: the id of the closed invoice whose period the
    # late usage belongs to (quantity and subtotal are the change, may be < 0).
    adjusts: str | None = None

    @property
    def line_key(self) -> str:
        """Unique within an invoice: the metric, or the metric of the adjusted invoice."""
        return self.metric_code if self.adjusts is None else f"adj:{self.adjusts}:{self.metric_code}"


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str
    customer_id: str
    period_start: int  # Unix ms, inclusive
    period_end: int  # Unix ms, inclusive
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal  # sum of the rounded line subtotals
    generated_at: str  # ISO 8601, UTC
    currency: str = "USD"
    status: str = "draft"


def period_key(customer_id: str, start_ms: int, end_ms: int) -> str:
    """A stable digest of (customer, period): the root of invoice and billing ids."""
    return hashlib.sha256(f"{customer_id}|{start_ms}|{end_ms}".encode()).hexdigest()


def invoice_id_for(customer_id: str, start_ms: int, end_ms: int) -> str:
    return "inv_" + period_key(customer_id, start_ms, end_ms)[:24]


def unit_price_display(rule: PricingRule, unit: str) -> str:
    if rule.model is Model.FLAT:
        return f"${rule.unit_price}"
    if rule.model is Model.PACKAGE:
        return f"${rule.unit_price} per {rule.package_size} {unit}"
    return rule.model.value.capitalize()  # "Tiered", "Volume"


@exact_arithmetic
def build_invoice(
    customer_id: str,
    start_ms: int,
    end_ms: int,
    usage: Mapping[str, Decimal],
    metrics: Mapping[str, Metric],
    pricing: Mapping[str, PricingRule],
    generated_at: str,
    adjustments: Sequence[InvoiceLine] = (),
) -> Invoice:
    """Price `usage` (metric code -> quantity); metrics without usage or
    without a pricing rule get no line. `adjustments` (late usage of closed
    periods, see operators.adjustments) follow the usage lines and count in
    the subtotal."""
    lines: list[InvoiceLine] = []
    for code, metric in metrics.items():
        quantity = usage.get(code, Decimal(0))
        rule = pricing.get(code)
        if quantity <= 0 or rule is None:
            continue
        charge = price(rule, quantity)
        lines.append(
            InvoiceLine(
                metric_code=code,
                metric_name=metric.name,
                quantity=quantity,
                unit=metric.unit,
                unit_price_display=unit_price_display(rule, metric.unit),
                subtotal=charge.subtotal,
                tiers=charge.tiers if rule.model in (Model.TIERED, Model.VOLUME) else (),
            )
        )
    lines.extend(adjustments)
    return Invoice(
        invoice_id=invoice_id_for(customer_id, start_ms, end_ms),
        customer_id=customer_id,
        period_start=start_ms,
        period_end=end_ms,
        lines=tuple(lines),
        subtotal=sum((line.subtotal for line in lines), Decimal(0)),
        generated_at=generated_at,
    )


def _tier_to_dict(tier: TierCharge) -> dict[str, Any]:
    return {
        "tier": tier.tier,
        "from_quantity": str(tier.from_quantity),
        "up_to": None if tier.up_to is None else str(tier.up_to),
        "quantity": str(tier.quantity),
        "unit_price": str(tier.unit_price),
        "amount": str(tier.amount),
    }


def invoice_to_dict(invoice: Invoice) -> dict[str, Any]:
    """A JSON-safe copy that `invoice_from_dict` turns back into the same
    invoice (Decimals as strings, so nothing is lost to floats)."""
    return {
        "invoice_id": invoice.invoice_id,
        "customer_id": invoice.customer_id,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "lines": [
            {
                "metric_code": line.metric_code,
                "metric_name": line.metric_name,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "unit_price_display": line.unit_price_display,
                "subtotal": str(line.subtotal),
                "tiers": [_tier_to_dict(t) for t in line.tiers],
                "adjusts": line.adjusts,
            }
            for line in invoice.lines
        ],
        "subtotal": str(invoice.subtotal),
        "generated_at": invoice.generated_at,
        "currency": invoice.currency,
        "status": invoice.status,
    }


def _optional_decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def invoice_from_dict(data: Mapping[str, Any]) -> Invoice:
    return Invoice(
        invoice_id=data["invoice_id"],
        customer_id=data["customer_id"],
        period_start=data["period_start"],
        period_end=data["period_end"],
        lines=tuple(
            InvoiceLine(
                metric_code=line["metric_code"],
                metric_name=line["metric_name"],
                quantity=Decimal(line["quantity"]),
                unit=line["unit"],
                unit_price_display=line["unit_price_display"],
                subtotal=Decimal(line["subtotal"]),
                tiers=tuple(
                    TierCharge(
                        tier=t["tier"],
                        from_quantity=Decimal(t["from_quantity"]),
                        up_to=_optional_decimal(t["up_to"]),
                        quantity=Decimal(t["quantity"]),
                        unit_price=Decimal(t["unit_price"]),
                        amount=Decimal(t["amount"]),
                    )
                    for t in line["tiers"]
                ),
                adjusts=line["adjusts"],
            )
            for line in data["lines"]
        ),
        subtotal=Decimal(data["subtotal"]),
        generated_at=data["generated_at"],
        currency=data["currency"],
        status=data["status"],
    )
