from decimal import Decimal

from operators.invoices import build_invoice, invoice_id_for
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code

D = Decimal


def invoice(usage):
    return build_invoice("acme", 0, 999, usage, catalog_by_code(), pricing_by_code(), "2026-01-01T00:00:00+00:00")


def test_lines_for_metrics_with_usage_only_and_exact_subtotals():
    inv = invoice({"api_calls": D(15000), "bandwidth": D(3500), "storage_peak": D(100), "compute_time": D(0)})
    lines = {line.metric_code: line for line in inv.lines}
    assert set(lines) == {"api_calls", "bandwidth", "storage_peak"}
    assert lines["api_calls"].subtotal == D("11.50")
    assert lines["api_calls"].unit_price_display == "Tiered"
    assert len(lines["api_calls"].tiers) == 3
    assert lines["bandwidth"].subtotal == D("0.04")
    assert lines["bandwidth"].unit_price_display == "$0.00001"
    assert lines["bandwidth"].tiers == ()
    assert lines["storage_peak"].subtotal == D("10.00")
    assert lines["storage_peak"].unit_price_display == "$0.10"
    assert inv.subtotal == D("21.54")
    assert (inv.currency, inv.status) == ("USD", "draft")


def test_invoice_id_is_a_pure_function_of_customer_and_period():
    assert invoice({}).invoice_id == invoice_id_for("acme", 0, 999)
    assert invoice_id_for("acme", 0, 999) != invoice_id_for("acme", 0, 1000)
    assert invoice_id_for("acme", 0, 999) != invoice_id_for("acme2", 0, 999)


def test_no_usage_no_lines():
    inv = invoice({})
    assert inv.lines == () and inv.subtotal == 0
