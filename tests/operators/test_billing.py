import hashlib
from decimal import Decimal

import pytest

from operators.billing import (
    CUSTOMER_REF,
    INVOICE_REF,
    STRIPE_MAX_AMOUNT_CENTS,
    BillingPlan,
    StripeAmountLimit,
    billing_key,
    cents,
    customer_key,
    parse_customer_map,
    plan_billing,
)
from operators.invoices import build_invoice
from operators.metrics import catalog_by_code
from operators.pricing import pricing_by_code

D = Decimal
START, END = 1_767_225_600_000, 1_769_903_999_999  # January 2026, UTC, inclusive


def invoice(usage, customer_id="acme", start=START, end=END):
    generated_at = "2026-02-01T00:00:00+00:00"
    return build_invoice(customer_id, start, end, usage, catalog_by_code(), pricing_by_code(), generated_at)


def test_cents_round_half_up_once():
    assert cents(D("11.50")) == 1150
    assert cents(D("0.005")) == 1
    assert cents(D("0.0049")) == 0
    assert cents(D("21.545")) == 2155


def test_operations_in_contract_order_with_amounts_in_cents():
    plan = plan_billing(invoice({"api_calls": D(15000), "bandwidth": D(3500), "storage_peak": D(100)}), "cus_123")
    assert [(op.step, op.action) for op in plan.operations] == [
        ("invoice", "stripe.invoices.create"),
        ("item:api_calls", "stripe.invoiceItems.create"),
        ("item:bandwidth", "stripe.invoiceItems.create"),
        ("item:storage_peak", "stripe.invoiceItems.create"),
        ("finalize", "stripe.invoices.finalizeInvoice"),
        ("send", "stripe.invoices.sendInvoice"),
    ]
    items = [op.payload for op in plan.operations[1:4]]
    assert [item["amount"] for item in items] == [1150, 4, 1000]
    assert {item["currency"] for item in items} == {"usd"}
    assert {item["invoice"] for item in items} == {INVOICE_REF}
    assert {item["customer"] for item in items} == {"cus_123"}
    assert items[0]["description"] == "API Calls: 15,000 calls"
    assert items[0]["period"] == {"start": START // 1000, "end": END // 1000}
    assert (plan.total_amount_cents, plan.line_items, plan.currency) == (2154, 3, "usd")
    create = plan.operations[0].payload
    assert create["customer"] == "cus_123"
    assert (create["currency"], create["collection_method"], create["auto_advance"]) == ("usd", "send_invoice", False)
    assert create["metadata"]["meterflow_invoice_id"] == invoice({}).invoice_id
    assert plan.operations[4].payload == plan.operations[5].payload == {"invoice": INVOICE_REF}


def test_keys_are_pure_functions_of_customer_and_period():
    digest = hashlib.sha256(f"acme|{START}|{END}".encode()).hexdigest()
    assert billing_key("acme", START, END) == "mf_bill_" + digest[:32]
    one = plan_billing(invoice({"api_calls": D(15000)}), "cus_1")
    other_usage = plan_billing(invoice({"api_calls": D(20000), "bandwidth": D(1)}), "cus_2")
    assert one.idempotency_key == other_usage.idempotency_key == billing_key("acme", START, END)
    # Step keys follow the step's name, not its position: a new line leaves the others' keys alone.
    keys = {op.step: op.idempotency_key for op in other_usage.operations}
    assert {op.step: op.idempotency_key for op in one.operations}.items() <= keys.items()
    assert keys["item:api_calls"] == one.idempotency_key + ":item:api_calls"
    assert len(set(keys.values())) == len(keys)
    assert billing_key("acme", START, END + 1) != one.idempotency_key
    assert billing_key("acme2", START, END) != one.idempotency_key
    assert customer_key("acme") == customer_key("acme") != customer_key("acme2")


def test_no_usage_plans_no_operations():
    plan = plan_billing(invoice({}), CUSTOMER_REF)
    assert (plan.operations, plan.total_amount_cents, plan.line_items) == ((), 0, 0)
    assert plan.idempotency_key == billing_key("acme", START, END)


def test_zero_cent_lines_are_still_billed_items():
    plan = plan_billing(invoice({"api_calls": D(500)}), "cus_1")  # inside the free tier
    assert [op.payload.get("amount") for op in plan.operations] == [None, 0, None, None]
    assert plan.total_amount_cents == 0


def test_resolved_fills_in_known_ids_only():
    plan = plan_billing(invoice({"bandwidth": D(3500)}), CUSTOMER_REF)
    partly = plan.resolved({CUSTOMER_REF: "cus_9"})
    assert [op.payload.get("customer") for op in partly.operations[:2]] == ["cus_9", "cus_9"]
    assert partly.operations[1].payload["invoice"] == INVOICE_REF
    full = partly.resolved({INVOICE_REF: "in_7"})
    assert [op.payload.get("invoice") for op in full.operations] == [None, "in_7", "in_7", "in_7"]
    assert plan.operations[1].payload["invoice"] == INVOICE_REF  # the original is unchanged


def test_plan_survives_its_json_record():
    plan = plan_billing(invoice({"api_calls": D(15000), "storage_peak": D("7.5")}), "cus_1")
    assert BillingPlan.from_json(plan.to_json()) == plan


def test_customer_map():
    assert parse_customer_map("") == {}
    assert parse_customer_map('{"acme": "cus_1"}') == {"acme": "cus_1"}
    for bad in ('["acme"]', '{"acme": 1}', '{"acme": ""}', "{not json"):
        with pytest.raises(ValueError):
            parse_customer_map(bad)


def test_stripe_takes_a_line_and_a_total_up_to_its_limit():
    at_limit = plan_billing(invoice({"storage_peak": D("9999999.9")}), "cus_1")  # $999,999.99
    assert at_limit.total_amount_cents == STRIPE_MAX_AMOUNT_CENTS == 99_999_999


def test_a_line_beyond_stripes_limit_is_refused_naming_amount_and_limit():
    over = invoice({"api_calls": D(15000), "storage_peak": D("9999999.95")})  # rounds to $1,000,000.00
    with pytest.raises(StripeAmountLimit) as refused:
        plan_billing(over, "cus_1")
    assert refused.value.amount_cents == 100_000_000
    assert "line storage_peak of 100000000 cents" in str(refused.value) and "99999999 cents" in str(refused.value)
    assert over.invoice_id in str(refused.value)


def test_a_total_beyond_stripes_limit_is_refused_though_each_line_fits():
    # $600,000.00 of storage + $500,000.00 of bandwidth
    over = invoice({"storage_peak": D(6_000_000), "bandwidth": D(50_000_000_000)})
    with pytest.raises(StripeAmountLimit) as refused:
        plan_billing(over, CUSTOMER_REF)
    assert refused.value.amount_cents == 110_000_000 and "the total of 110000000 cents" in str(refused.value)
