"""An invoice for a customer and period, from the usage stored in ClickHouse."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Sequence

from api.deps import Clients
from api.usage import query_usage
from operators.invoices import Invoice, InvoiceLine, build_invoice
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code


def period_usage(clients: Clients, customer_id: str, start_ms: int, end_ms: int) -> dict[str, Decimal]:
    """Usage of every priced metric over the period, as ClickHouse holds it now."""
    pricing = pricing_by_code()
    return {
        code: query_usage(
            clients.clickhouse, clients.settings.clickhouse_database, metric, customer_id, start_ms, end_ms
        ).value
        for code, metric in catalog_by_code().items()
        if code in pricing
    }


def calculate_invoice(
    clients: Clients, customer_id: str, start_ms: int, end_ms: int, adjustments: Sequence[InvoiceLine] = ()
) -> Invoice:
    return build_invoice(
        customer_id,
        start_ms,
        end_ms,
        period_usage(clients, customer_id, start_ms, end_ms),
        catalog_by_code(),
        pricing_by_code(),
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        adjustments=adjustments,
    )
