from decimal import Decimal

import pytest

from operators.pricing import DEFAULT_PRICING, Model, PricingRule, Tier, price, pricing_by_code, to_cents

D = Decimal
RULES = pricing_by_code()


def subtotal(code: str, quantity) -> Decimal:
    return price(RULES[code], D(quantity)).subtotal


def test_contract_worked_example_15000_api_calls_cost_11_50():
    charge = price(RULES["api_calls"], D(15000))
    assert charge.subtotal == D("11.50")
    assert [(t.tier, t.quantity, t.amount) for t in charge.tiers] == [
        (1, D(1000), D(0)),
        (2, D(9000), D("9.000")),
        (3, D(5000), D("2.5000")),
    ]


@pytest.mark.parametrize(
    "quantity, expected",
    [(0, "0.00"), (1, "0.00"), (1000, "0.00"), (1001, "0.00"), (1005, "0.01"), (10000, "9.00"), (10001, "9.00"), (10010, "9.01")],
)
def test_api_calls_tier_boundaries(quantity, expected):
    assert subtotal("api_calls", quantity) == D(expected)


def test_flat_prices_of_the_contract():
    assert subtotal("bandwidth", 3500) == D("0.04")  # 0.035 rounds half-up
    assert subtotal("storage_peak", 100) == D("10.00")
    assert subtotal("compute_time", 123456) == D("1.23")


def test_rounding_is_half_up_once_at_the_end():
    assert to_cents(D("0.005")) == D("0.01")
    assert to_cents(D("0.0049999")) == D("0.00")
    # Graduated tiers are summed exactly before rounding: 3 x 0.0005 = 0.0015 -> 0.00
    assert subtotal("api_calls", 10003) == D("9.00")


def test_volume_prices_all_units_at_the_reached_tier():
    rule = PricingRule("x", Model.VOLUME, tiers=(Tier(D(100), D("1")), Tier(None, D("0.5"))))
    assert price(rule, D(100)).amount == D(100)
    assert price(rule, D(101)).amount == D("50.5")
    assert price(rule, D(101)).tiers[0].tier == 2


def test_package_charges_started_packages():
    rule = PricingRule("x", Model.PACKAGE, unit_price=D("5"), package_size=D(1000))
    assert price(rule, D(0)).amount == 0
    assert price(rule, D(1)).amount == 5
    assert price(rule, D(1000)).amount == 5
    assert price(rule, D(1001)).amount == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(model=Model.FLAT),
        dict(model=Model.PACKAGE, unit_price=D(1)),
        dict(model=Model.TIERED, tiers=(Tier(D(10), D(1)),)),
        dict(model=Model.TIERED, tiers=(Tier(D(10), D(1)), Tier(D(5), D(1)), Tier(None, D(1)))),
    ],
)
def test_invalid_rules_are_refused(kwargs):
    with pytest.raises(ValueError):
        PricingRule("x", **kwargs)


def test_negative_quantity_is_a_credit_of_what_it_would_cost():
    # Only a metric that allows credits has one (operators.metrics.Metric.allow_negative).
    assert price(RULES["api_calls"], D(-15000)).amount == -price(RULES["api_calls"], D(15000)).amount
    assert price(RULES["bandwidth"], D(-3500)).subtotal == D("-0.04")


def test_the_largest_quantity_sum_prices_exactly_without_a_decimal_error():
    # ClickHouse sums quantities as Decimal(76, 9): the largest such sum, at
    # the contract's prices, is priced and rounded with no digit lost.
    largest = D("9" * 67 + "." + "9" * 9)
    for rule in DEFAULT_PRICING:
        charge = price(rule, largest)
        assert charge.subtotal == to_cents(charge.amount)
    assert price(RULES["bandwidth"], largest).amount == D("9" * 62 + "." + "9" * 14)
    assert price(RULES["storage_peak"], largest).subtotal == D("9" * 66 + ".99") + D("0.01")


def test_a_product_beyond_the_default_28_digits_is_not_rounded():
    two_int64 = D(2 * (2**63 - 1))
    assert price(RULES["bandwidth"], two_int64).amount == D("184467440737095.51614")
    big = D("123456789012345678901234567890.123456789")
    assert price(RULES["compute_time"], big).amount == D("1234567890123456789012345.67890123456789")
