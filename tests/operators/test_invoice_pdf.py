import dataclasses
import io
from decimal import Decimal

import pypdf

from operators.invoice_pdf import render_invoice_pdf
from operators.invoices import Invoice, InvoiceLine, build_invoice
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code

D = Decimal
JANUARY = (1_767_225_600_000, 1_769_903_999_999)  # 2026-01-01T00:00Z .. 2026-01-31T23:59:59.999Z


def invoice(usage: dict[str, Decimal], customer_id: str = "acme-corp") -> Invoice:
    return build_invoice(
        customer_id, *JANUARY, usage, catalog_by_code(), pricing_by_code(), "2026-02-01T06:30:00+00:00"
    )


def with_adjustments(base: Invoice, *lines: InvoiceLine) -> Invoice:
    return dataclasses.replace(
        base, lines=base.lines + lines, subtotal=base.subtotal + sum(line.subtotal for line in lines)
    )


def pdf_text(data: bytes) -> str:
    """The text of every page, whitespace collapsed to single spaces (a table
    row reads as one run of words)."""
    pages = pypdf.PdfReader(io.BytesIO(data)).pages
    return " ".join(" ".join(page.extract_text().split()) for page in pages)


def test_plain_invoice_shows_ids_period_lines_and_total():
    inv = invoice({"bandwidth": D(3500), "storage_peak": D(12345), "compute_time": D(100)})
    data = render_invoice_pdf(inv)
    assert data.startswith(b"%PDF")
    text = pdf_text(data)
    assert "Invoice" in text
    assert f"Invoice {inv.invoice_id}" in text
    assert "Customer acme-corp" in text
    assert "Period 2026-01-01 to 2026-01-31 (UTC)" in text
    assert "Generated 2026-02-01 06:30:00 UTC" in text
    assert "Status draft" in text
    assert "Bandwidth 3,500 bytes $0.00001 $0.04" in text
    assert "Peak Storage 12,345 GB $0.10 $1,234.50" in text
    assert "Compute Time 100 ms $0.00001 $0.00" in text
    assert "Subtotal $1,234.54" in text
    assert "Total (USD) $1,234.54" in text
    assert "Adjustments for earlier periods" not in text


def test_tiered_line_has_a_row_per_tier():
    text = pdf_text(render_invoice_pdf(invoice({"api_calls": D(15000)})))
    assert "API Calls 15,000 calls Tiered $11.50" in text
    assert "Tier 1: 0 to 1,000 1,000 calls $0.00 $0.00" in text
    assert "Tier 2: 1,000 to 10,000 9,000 calls $0.001 $9.00" in text
    assert "Tier 3: above 10,000 5,000 calls $0.0005 $2.50" in text
    assert "Total (USD) $11.50" in text


def test_adjustments_for_closed_invoices_are_a_section_of_their_own():
    december, november = "inv_000000000000000000december", "inv_00000000000000000november"
    late = InvoiceLine("bandwidth", "Bandwidth", D(250_000), "bytes", "$0.00001", D("2.50"), adjusts=december)
    refund = InvoiceLine("storage_peak", "Peak Storage", D(-15), "GB", "$0.10", D("-1.50"), adjusts=november)
    inv = with_adjustments(invoice({"bandwidth": D(1000)}), late, refund)
    text = pdf_text(render_invoice_pdf(inv))
    usage, adjustments = text.split("Adjustments for earlier periods")
    assert "Bandwidth 1,000 bytes $0.00001 $0.01" in usage
    assert f"Bandwidth 250,000 bytes $0.00001 $2.50 adjusts invoice {december}" in adjustments
    assert f"Peak Storage -15 GB $0.10 -$1.50 adjusts invoice {november}" in adjustments
    assert "Total (USD) $1.01" in adjustments


def test_negative_total():
    refund = InvoiceLine("bandwidth", "Bandwidth", D(-500_000), "bytes", "$0.00001", D("-5.00"), adjusts="inv_x")
    text = pdf_text(render_invoice_pdf(with_adjustments(invoice({}), refund)))
    assert "No usage in this period." in text
    assert "Total (USD) -$5.00" in text


def test_invoice_without_lines():
    text = pdf_text(render_invoice_pdf(invoice({})))
    assert "No usage in this period." in text
    assert "Total (USD) $0.00" in text


def test_text_core_fonts_cannot_encode_is_replaced_not_fatal():
    inv = invoice({"api_calls": D(10)}, customer_id="kunde-müller-東京-€")
    text = pdf_text(render_invoice_pdf(inv, issuer="Ωmega Billing"))
    assert "Customer kunde-müller-??-?" in text  # ü is Latin-1, the rest is not
    assert "?mega Billing" in text


def test_status_override_and_same_bytes_for_the_same_invoice():
    inv = invoice({"api_calls": D(15000)})
    assert render_invoice_pdf(inv) == render_invoice_pdf(inv)
    assert "Status paid" in pdf_text(render_invoice_pdf(inv, status="paid"))
