"""An invoice for a customer and period, from the usage stored in ClickHouse."""

from __future__ import annotations

from datetime import datetime, timezone

from api.deps import Clients
from api.usage import query_usage
from operators.invoices import Invoice, build_invoice
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code


def calculate_invoice(clients: Clients, customer_id: str, start_ms: int, end_ms: int) -> Invoice:
    metrics = catalog_by_code()
    pricing = pricing_by_code()
    usage = {
        code: query_usage(
            clients.clickhouse, clients.settings.clickhouse_database, metric, customer_id, start_ms, end_ms
        ).value
        for code, metric in metrics.items()
        if code in pricing
    }
    return build_invoice(
        customer_id,
        start_ms,
        end_ms,
        usage,
        metrics,
        pricing,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
