"""Late usage against closed periods, as adjustments instead of edits.

Once an invoice is finalized it never changes: the customer may already
hold it. Events for its period can still arrive afterwards (validation
accepts events up to 30 days old). Each closed invoice therefore keeps, per
metric, the usage it has *accounted for*: first what it billed, then that
plus every adjustment recorded since. When the stored usage of the period
differs from the accounted usage, the difference becomes an adjustment:
the change in quantity and the change in price,

    amount = price(usage now) - price(usage accounted)

so that what the customer pays for a period over all invoices telescopes
to exactly the price of its final usage, tiers included (a volume tier can
make an adjustment negative: a credit). Adjustments are carried as lines on
the customer's next invoice.

An adjustment's id is a digest of (invoice, metric, accounted, now), so
recording the same difference twice (a job re-run after a crash) yields the
same id and is recognised.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Iterable, Mapping

from operators.invoices import InvoiceLine
from operators.metrics import Metric
from operators.pricing import PricingRule, exact_arithmetic, price

ADJUSTMENT_PRICE_DISPLAY = "Adjustment"


@dataclass(frozen=True, slots=True)
class Adjustment:
    adjustment_id: str
    customer_id: str
    invoice_id: str  # the closed invoice whose period the usage belongs to
    metric_code: str
    quantity: Decimal  # usage now - usage accounted (may be < 0)
    amount: Decimal  # price change, rounded to cents (may be < 0)
    accounted_quantity: Decimal  # the invoice's accounted usage once this is recorded
    created_at: str  # ISO 8601, UTC

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Adjustment":
        decimals = {"quantity", "amount", "accounted_quantity"}
        return cls(**{k: Decimal(v) if k in decimals else v for k, v in data.items()})


def adjustment_id(invoice_id: str, metric_code: str, accounted: Decimal, now: Decimal) -> str:
    digest = hashlib.sha256(f"{invoice_id}|{metric_code}|{accounted}|{now}".encode()).hexdigest()
    return "adj_" + digest[:24]


@exact_arithmetic
def late_usage_adjustments(
    customer_id: str,
    invoice_id: str,
    accounted: Mapping[str, Decimal],
    usage_now: Mapping[str, Decimal],
    pricing: Mapping[str, PricingRule],
    created_at: str,
) -> list[Adjustment]:
    """One adjustment per priced metric whose usage moved since it was accounted."""
    adjustments = []
    for code in sorted(set(accounted) | set(usage_now)):
        rule = pricing.get(code)
        before, now = accounted.get(code, Decimal(0)), usage_now.get(code, Decimal(0))
        if rule is None or before == now:
            continue
        amount = price(rule, now).subtotal - price(rule, before).subtotal
        adjustments.append(
            Adjustment(
                adjustment_id=adjustment_id(invoice_id, code, before, now),
                customer_id=customer_id,
                invoice_id=invoice_id,
                metric_code=code,
                quantity=now - before,
                amount=amount,
                accounted_quantity=now,
                created_at=created_at,
            )
        )
    return adjustments


@exact_arithmetic
def adjustment_lines(adjustments: Iterable[Adjustment], metrics: Mapping[str, Metric]) -> tuple[InvoiceLine, ...]:
    """Invoice lines for `adjustments`: one per (adjusted invoice, metric), summed."""
    totals: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
    for adj in adjustments:
        quantity, amount = totals.get((adj.invoice_id, adj.metric_code), (Decimal(0), Decimal(0)))
        totals[(adj.invoice_id, adj.metric_code)] = (quantity + adj.quantity, amount + adj.amount)
    lines = []
    for (invoice_id, code), (quantity, amount) in sorted(totals.items()):
        metric = metrics[code]
        lines.append(
            InvoiceLine(
                metric_code=code,
                metric_name=f"{metric.name} (late usage)",
                quantity=quantity,
                unit=metric.unit,
                unit_price_display=ADJUSTMENT_PRICE_DISPLAY,
                subtotal=amount,
                adjusts=invoice_id,
            )
        )
    return tuple(lines)
