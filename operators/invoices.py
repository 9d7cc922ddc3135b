"""Invoices from usage: one line per priced metric with usage, in Decimal.

Identity is a pure function of customer and period (`invoice_id_for`), so
computing the same period twice yields the same invoice and billing it
twice can be recognised (see api.billing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Mapping

from operators.metrics import Metric
from operators.pricing import Model, PricingRule, TierCharge, price


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


def build_invoice(
    customer_id: str,
    start_ms: int,
    end_ms: int,
    usage: Mapping[str, Decimal],
    metrics: Mapping[str, Metric],
    pricing: Mapping[str, PricingRule],
    generated_at: str,
) -> Invoice:
    """Price `usage` (metric code -> quantity); metrics without usage or
    without a pricing rule get no line."""
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
    return Invoice(
        invoice_id=invoice_id_for(customer_id, start_ms, end_ms),
        customer_id=customer_id,
        period_start=start_ms,
        period_end=end_ms,
        lines=tuple(lines),
        subtotal=sum((line.subtotal for line in lines), Decimal(0)),
        generated_at=generated_at,
    )
