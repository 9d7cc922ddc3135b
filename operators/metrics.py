"""The metrics catalog: which events a metric counts and how it aggregates them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Aggregation(str, enum.Enum):
    COUNT = "COUNT"  # number of events
    SUM = "SUM"  # sum of a numeric property
    MAX = "MAX"  # largest value of a numeric property (peaks: storage)
    AVG = "AVG"  # mean of a numeric property
    UNIQUE_COUNT = "UNIQUE_COUNT"  # distinct values of a property (active users)
    LATEST = "LATEST"  # the value of the most recent event (gauges)

    @property
    def needs_property(self) -> bool:
        return self is not Aggregation.COUNT

    @property
    def reads_quantity(self) -> bool:
        """Whether the property's values are numbers the metric adds up or
        compares, and so must lie in the quantity domain."""
        return self in (Aggregation.SUM, Aggregation.MAX, Aggregation.AVG, Aggregation.LATEST)


# The numeric domain of a metered quantity: the value of a property that a
# SUM, MAX, AVG or LATEST metric reads. Integers of the signed 64-bit range,
# or decimals with at most QUANTITY_SCALE digits after the point, never
# larger in size than QUANTITY_MAX. ClickHouse adds them up as Decimal(76, 9),
# so a sum of any number of them is exact, and operators.pricing prices them
# in a Decimal context with room for the largest such sum.
QUANTITY_SCALE = 9
QUANTITY_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Metric:
    code: str
    name: str
    event_type: str
    aggregation: Aggregation
    unit: str
    property: str | None = None
    # Credits: whether a value may be negative (refunds, corrections). A
    # metric that only adds up (counts, bytes, storage, compute) refuses
    # negative values, so no event can lower a bill.
    allow_negative: bool = False

    def __post_init__(self) -> None:
        if self.aggregation.needs_property and not self.property:
            raise ValueError(f"metric {self.code}: {self.aggregation.value} needs a property")


DEFAULT_CATALOG: tuple[Metric, ...] = (
    Metric("api_calls", "API Calls", "api_request", Aggregation.COUNT, "calls"),
    Metric("bandwidth", "Bandwidth", "api_request", Aggregation.SUM, "bytes", "bytes"),
    Metric("storage_peak", "Peak Storage", "storage", Aggregation.MAX, "GB", "gb_stored"),
    Metric("compute_time", "Compute Time", "compute", Aggregation.SUM, "ms", "cpu_ms"),
)


def catalog_by_code(catalog: tuple[Metric, ...] = DEFAULT_CATALOG) -> dict[str, Metric]:
    return {metric.code: metric for metric in catalog}


# event_type -> ((property, allow_negative), ...): the quantities an event of
# that type carries for the metrics of a catalog.
MeteredProperties = dict[str, tuple[tuple[str, bool], ...]]


def metered_properties(catalog: tuple[Metric, ...] = DEFAULT_CATALOG) -> MeteredProperties:
    """The properties validation holds to the quantity domain, per event type.

    A property two metrics read allows negative values only if both do.
    """
    index: dict[str, dict[str, bool]] = {}
    for metric in catalog:
        if metric.aggregation.reads_quantity and metric.property:
            props = index.setdefault(metric.event_type, {})
            props[metric.property] = props.get(metric.property, True) and metric.allow_negative
    return {event_type: tuple(props.items()) for event_type, props in index.items()}


DEFAULT_METERED = metered_properties()


# Aggregations a detector can follow hour by hour, and how values of one
# hour combine: counts and sums add up, peaks take the largest. AVG, LATEST
# and UNIQUE_COUNT are not hourly-additive, so they are not watched.
DETECTOR_COMBINE: dict[Aggregation, str] = {
    Aggregation.COUNT: "sum",
    Aggregation.SUM: "sum",
    Aggregation.MAX: "max",
}


# What one event of a type contributes to the detectors: (metric code,
# property) per watched metric, the property None for COUNT.
ObservedMetrics = tuple[tuple[str, str | None], ...]


def observed_metrics(catalog: tuple[Metric, ...] = DEFAULT_CATALOG) -> dict[str, ObservedMetrics]:
    """event_type -> the metrics of `catalog` the detectors follow for it.

    Built once per catalog, so an event looks up its few metrics by type
    instead of going through the whole catalog.
    """
    index: dict[str, list[tuple[str, str | None]]] = {}
    for metric in catalog:
        if metric.aggregation in DETECTOR_COMBINE:
            prop = None if metric.aggregation is Aggregation.COUNT else metric.property
            index.setdefault(metric.event_type, []).append((metric.code, prop))
    return {event_type: tuple(metrics) for event_type, metrics in index.items()}


DEFAULT_OBSERVED = observed_metrics()


def numeric_value(value: object) -> float | None:
    """A property's value as a metric counts it: numbers and numeric strings;
    None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def observe(
    event_type: str, properties: dict, observed: dict[str, ObservedMetrics] = DEFAULT_OBSERVED
) -> list[tuple[str, float]]:
    """The (metric code, value) pairs one event contributes to the detectors.

    COUNT contributes 1; SUM and MAX the numeric value of their property
    (events without it, or with a non-numeric one, contribute nothing);
    other aggregations are not observed (see DETECTOR_COMBINE).
    `observed` is `observed_metrics(catalog)`.
    """
    out: list[tuple[str, float]] = []
    for code, prop in observed.get(event_type, ()):
        if prop is None:
            out.append((code, 1.0))
            continue
        value = numeric_value(properties.get(prop))
        if value is not None:
            out.append((code, value))
    return out
