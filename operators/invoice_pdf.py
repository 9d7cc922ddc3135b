"""An invoice as a PDF document (fpdf2, core fonts only).

Pure: the document depends on the invoice alone. Its creation date is the
invoice's `generated_at`, so rendering the same invoice again gives the same
bytes and a stored copy never changes when it is re-rendered.

Core fonts need no font files, but encode Latin-1 only; text they cannot
encode (a customer id may hold any printable character) is shown as "?"
rather than failing the whole invoice.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

from fpdf import FPDF
from fpdf.fonts import FontFace

from operators.invoices import Invoice, InvoiceLine
from operators.pricing import TierCharge

FONT = "Helvetica"
ENCODING = "latin-1"  # what fpdf2's core fonts encode
HEADINGS = ("Metric", "Quantity", "Unit", "Unit price", "Subtotal")
COLUMN_WIDTHS = (34, 18, 12, 18, 18)  # fractions of the page width
ALIGN = ("LEFT", "RIGHT", "LEFT", "RIGHT", "RIGHT")
DETAIL = FontFace(size_pt=8, color=90)  # tier and adjustment rows under a line


def render_invoice_pdf(invoice: Invoice, *, status: str | None = None, issuer: str = "MeterFlow") -> bytes:
    """The invoice as PDF bytes; `status` overrides `invoice.status` (an
    invoice issued or paid after it was calculated)."""
    generated_at = _utc(invoice.generated_at)
    pdf = FPDF(format="A4")
    pdf.set_creation_date(generated_at)
    pdf.set_title(_text(f"Invoice {invoice.invoice_id}"))
    pdf.set_author(_text(issuer))
    pdf.add_page()

    pdf.set_font(FONT, "B", 20)
    pdf.cell(text="Invoice", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 10)
    pdf.cell(text=_text(issuer), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    _facts(
        pdf,
        {
            "Invoice": invoice.invoice_id,
            "Customer": invoice.customer_id,
            "Period": f"{_day(invoice.period_start)} to {_day(invoice.period_end)} (UTC)",
            "Generated": generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "Status": status or invoice.status,
        },
    )

    usage = [line for line in invoice.lines if line.adjusts is None]
    adjustments = [line for line in invoice.lines if line.adjusts is not None]
    _heading(pdf, "Usage")
    if usage:
        _lines_table(pdf, usage)
    else:
        pdf.cell(text="No usage in this period.", new_x="LMARGIN", new_y="NEXT")
    if adjustments:
        _heading(pdf, "Adjustments for earlier periods")
        _lines_table(pdf, adjustments)

    pdf.ln(4)
    _total(pdf, "Subtotal", invoice.subtotal, "")
    _total(pdf, f"Total ({invoice.currency})", invoice.subtotal, "B")
    return bytes(pdf.output())


def _facts(pdf: FPDF, facts: dict[str, str]) -> None:
    """Label and value pairs, one per line."""
    for label, value in facts.items():
        pdf.set_font(FONT, "B", 10)
        pdf.cell(40, 6, _text(label))
        pdf.set_font(FONT, "", 10)
        pdf.cell(text=_text(value), h=6, new_x="LMARGIN", new_y="NEXT")


def _total(pdf: FPDF, label: str, amount: Decimal, style: str) -> None:
    """A label and an amount, right-aligned under the tables' subtotal column."""
    pdf.set_font(FONT, style, 11)
    pdf.cell(pdf.epw - 40, 7, label, align="R")
    pdf.cell(40, 7, _money(amount), align="R", new_x="LMARGIN", new_y="NEXT")


def _heading(pdf: FPDF, title: str) -> None:
    pdf.ln(4)
    pdf.set_font(FONT, "B", 12)
    pdf.cell(text=title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font(FONT, "", 9)


def _lines_table(pdf: FPDF, lines: list[InvoiceLine]) -> None:
    """One row per line; under it a row per tier it was priced in and, for an
    adjustment, the invoice it corrects."""
    with pdf.table(col_widths=COLUMN_WIDTHS, text_align=ALIGN, borders_layout="HORIZONTAL_LINES") as table:
        table.row(HEADINGS)
        for line in lines:
            table.row(
                [
                    _text(line.metric_name),
                    _quantity(line.quantity),
                    _text(line.unit),
                    _text(line.unit_price_display),
                    _money(line.subtotal),
                ]
            )
            for tier in line.tiers:
                table.row(_tier_cells(tier, line.unit), style=DETAIL)
            if line.adjusts is not None:
                row = table.row(style=DETAIL)
                row.cell(_text(f"  adjusts invoice {line.adjusts}"), colspan=len(HEADINGS))


def _tier_cells(tier: TierCharge, unit: str) -> list[str]:
    lower = _quantity(tier.from_quantity)
    bounds = f"above {lower}" if tier.up_to is None else f"{lower} to {_quantity(tier.up_to)}"
    return [
        f"  Tier {tier.tier}: {bounds}",
        _quantity(tier.quantity),
        _text(unit),
        _money(tier.unit_price),
        _money(tier.amount),
    ]


def _text(value: str) -> str:
    """`value` with what the core fonts cannot encode replaced by "?"."""
    return value.encode(ENCODING, errors="replace").decode(ENCODING)


def _money(amount: Decimal) -> str:
    """$1,234.56 and -$1.50; more decimals only where the amount has them
    (exact tier amounts and unit prices such as $0.0005)."""
    places = max(2, -amount.normalize().as_tuple().exponent)  # type: ignore[operator]
    text = f"${abs(amount):,.{places}f}"
    return "-" + text if amount < 0 else text


def _quantity(quantity: Decimal) -> str:
    """15,000 and 2.5: thousands separators, no trailing zeros, no exponent."""
    return f"{quantity.normalize():,f}"


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).date().isoformat()


def _utc(iso: str) -> datetime:
    """An ISO 8601 time in UTC; one without an offset is taken as UTC."""
    at = datetime.fromisoformat(iso)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
