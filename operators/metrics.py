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


@dataclass(frozen=True, slots=True)
class Metric:
    code: str
    name: str
    event_type: str
    aggregation: Aggregation
    unit: str
    property: str | None = None

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
