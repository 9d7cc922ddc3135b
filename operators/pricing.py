"""Pricing maths: flat, tiered (graduated), volume and package models.

Money is `Decimal` throughout and is rounded once, half-up to cents, when a
line's subtotal is final (`to_cents`); tier amounts are kept exact.

Every sum, product and rounding of quantities and money runs in
EXACT_CONTEXT (`exact_arithmetic`), not in Python's default context: that
one keeps 28 digits and would round a large product silently, or refuse to
quantize it (`InvalidOperation`), where this one has room for the largest
invoice the quantity domain allows (operators.metrics).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Callable, ParamSpec, TypeVar

CENT = Decimal("0.01")

# A quantity sum has at most 76 digits (ClickHouse's Decimal(76, 9)), a price
# a few dozen; their product and every total of such products fit in 200
# digits, so no result is ever rounded but the one to cents. Anything that
# still does not fit raises instead of being rounded.
EXACT_CONTEXT = Context(prec=200, rounding=ROUND_HALF_UP, traps=[InvalidOperation, DivisionByZero, Overflow])

P = ParamSpec("P")
R = TypeVar("R")


def exact_arithmetic(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` with EXACT_CONTEXT as the thread's Decimal context."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext(EXACT_CONTEXT):
            return func(*args, **kwargs)

    return wrapper


class Model(str, enum.Enum):
    FLAT = "flat"  # every unit at one price
    TIERED = "tiered"  # graduated: each tier's units at that tier's price
    VOLUME = "volume"  # all units at the price of the tier the total falls in
    PACKAGE = "package"  # price per started package of `package_size` units


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # inclusive upper bound; None = no bound (last tier)
    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class PricingRule:
    metric_code: str
    model: Model
    currency: str = "USD"
    unit_price: Decimal | None = None  # flat, package (price of one package)
    tiers: tuple[Tier, ...] = ()  # tiered, volume
    package_size: Decimal | None = None  # package

    def __post_init__(self) -> None:
        if self.model in (Model.FLAT, Model.PACKAGE) and self.unit_price is None:
            raise ValueError(f"{self.metric_code}: {self.model.value} pricing needs unit_price")
        if self.model is Model.PACKAGE and not self.package_size:
            raise ValueError(f"{self.metric_code}: package pricing needs package_size")
        if self.model in (Model.TIERED, Model.VOLUME):
            if not self.tiers or self.tiers[-1].up_to is not None:
                raise ValueError(f"{self.metric_code}: tiers must end with an unbounded tier")
            bounds = [t.up_to for t in self.tiers[:-1]]
            if any(b is None for b in bounds) or bounds != sorted(bounds):
                raise ValueError(f"{self.metric_code}: tier bounds must increase")


@dataclass(frozen=True, slots=True)
class TierCharge:
    tier: int  # 1-based
    from_quantity: Decimal  # exclusive lower bound of the tier
    up_to: Decimal | None
    quantity: Decimal  # units charged in this tier
    unit_price: Decimal
    amount: Decimal  # exact, not rounded


@dataclass(frozen=True, slots=True)
class Charge:
    amount: Decimal  # exact
    tiers: tuple[TierCharge, ...] = ()

    @property
    def subtotal(self) -> Decimal:
        return to_cents(self.amount)


@exact_arithmetic
def to_cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    charges: list[TierCharge] = []
    lower = Decimal(0)
    for index, tier in enumerate(tiers, start=1):
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        in_tier = max(Decimal(0), upper - lower)
        if in_tier > 0:
            charges.append(
                TierCharge(index, lower, tier.up_to, in_tier, tier.unit_price, in_tier * tier.unit_price)
            )
        if tier.up_to is None or quantity <= tier.up_to:
            break
        lower = tier.up_to
    return Charge(sum((c.amount for c in charges), Decimal(0)), tuple(charges))


def _volume(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    lower = Decimal(0)
    for index, tier in enumerate(tiers, start=1):
        if tier.up_to is None or quantity <= tier.up_to:
            amount = quantity * tier.unit_price
            return Charge(amount, (TierCharge(index, lower, tier.up_to, quantity, tier.unit_price, amount),))
        lower = tier.up_to
    raise AssertionError("the last tier is unbounded")  # guarded by PricingRule


@exact_arithmetic
def price(rule: PricingRule, quantity: Decimal) -> Charge:
    """What `quantity` units cost under `rule` (exact; round with `.subtotal`).

    A negative quantity (only a metric that allows credits has one) is a
    credit of what the same quantity would cost.
    """
    if quantity < 0:
        credit = price(rule, -quantity)
        return Charge(-credit.amount, credit.tiers)
    if rule.model is Model.FLAT:
        return Charge(quantity * rule.unit_price)  # type: ignore[operator]
    if rule.model is Model.PACKAGE:
        packages = (quantity / rule.package_size).to_integral_value(rounding=ROUND_CEILING)  # type: ignore[operator]
        return Charge(packages * rule.unit_price)  # type: ignore[operator]
    if rule.model is Model.TIERED:
        return _graduated(rule.tiers, quantity)
    return _volume(rule.tiers, quantity)


DEFAULT_PRICING: tuple[PricingRule, ...] = (
    PricingRule(
        "api_calls",
        Model.TIERED,
        tiers=(
            Tier(Decimal(1000), Decimal(0)),
            Tier(Decimal(10000), Decimal("0.001")),
            Tier(None, Decimal("0.0005")),
        ),
    ),
    PricingRule("bandwidth", Model.FLAT, unit_price=Decimal("0.00001")),
    PricingRule("storage_peak", Model.FLAT, unit_price=Decimal("0.10")),
    PricingRule("compute_time", Model.FLAT, unit_price=Decimal("0.00001")),
)


def pricing_by_code(rules: tuple[PricingRule, ...] = DEFAULT_PRICING) -> dict[str, PricingRule]:
    return {rule.metric_code: rule for rule in rules}
