from decimal import Decimal

from operators.adjustments import adjustment_lines, late_usage_adjustments
from operators.billing import plan_billing
from operators.invoices import build_invoice, invoice_from_dict, invoice_to_dict
from operators.metrics import catalog_by_code
from operators.pricing import Model, PricingRule, Tier, price, pricing_by_code

D = Decimal
AT = "2026-11-02T00:00:00+00:00"


def test_late_usage_becomes_the_price_difference_not_a_second_price():
    pricing = pricing_by_code()  # api_calls: first 1000 free, then 0.001, then 0.0005 above 10k
    found = late_usage_adjustments("acme", "inv_1", {"api_calls": D(9_500)}, {"api_calls": D(11_000)}, pricing, AT)
    (adj,) = found
    assert adj.quantity == D(1_500) and adj.accounted_quantity == D(11_000)
    # 500 calls at 0.001 + 1000 at 0.0005, priced across the tier boundary
    assert adj.amount == D("1.00")
    assert price(pricing["api_calls"], D(9_500)).subtotal + adj.amount == price(pricing["api_calls"], D(11_000)).subtotal


def test_nothing_moved_means_no_adjustment_and_ids_are_stable():
    pricing = pricing_by_code()
    assert late_usage_adjustments("acme", "inv_1", {"api_calls": D(5)}, {"api_calls": D(5)}, pricing, AT) == []
    first = late_usage_adjustments("acme", "inv_1", {}, {"bandwidth": D(100)}, pricing, AT)
    again = late_usage_adjustments("acme", "inv_1", {}, {"bandwidth": D(100)}, pricing, "later")
    assert first[0].adjustment_id == again[0].adjustment_id  # the same difference, recognised on a re-run
    assert first[0].quantity == D(100)  # a metric the closed invoice had no line for


def test_volume_pricing_can_make_a_credit():
    volume = PricingRule("api_calls", Model.VOLUME, tiers=(Tier(D(1000), D("0.01")), Tier(None, D("0.005"))))
    (adj,) = late_usage_adjustments("acme", "inv_1", {"api_calls": D(1000)}, {"api_calls": D(1200)}, {"api_calls": volume}, AT)
    assert adj.amount == D("-4.00")  # $10.00 billed; 1200 at the lower price is $6.00


def test_adjustments_ride_on_the_next_invoice_and_into_stripe():
    metrics, pricing = catalog_by_code(), pricing_by_code()
    adjustments = late_usage_adjustments("acme", "inv_old", {"bandwidth": D(1000)}, {"bandwidth": D(51_000)}, pricing, AT)
    adjustments += late_usage_adjustments("acme", "inv_old", {"bandwidth": D(51_000)}, {"bandwidth": D(61_000)}, pricing, AT)
    (line,) = adjustment_lines(adjustments, metrics)  # one line per adjusted invoice and metric
    assert (line.adjusts, line.quantity, line.subtotal) == ("inv_old", D(60_000), D("0.60"))
    invoice = build_invoice("acme", 0, 999, {"api_calls": D(2000)}, metrics, pricing, AT, adjustments=(line,))
    assert invoice.subtotal == D("1.00") + D("0.60")
    assert [l.line_key for l in invoice.lines] == ["api_calls", "adj:inv_old:bandwidth"]
    plan = plan_billing(invoice, "cus_1")
    item = next(op for op in plan.operations if op.step == "item:adj:inv_old:bandwidth")
    assert item.payload["amount"] == 60 and item.payload["metadata"]["meterflow_adjusts"] == "inv_old"
    assert plan.total_amount_cents == 160
    assert invoice_from_dict(invoice_to_dict(invoice)) == invoice  # stored and read back unchanged
