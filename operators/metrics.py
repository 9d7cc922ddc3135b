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


def observe(event_type: str, properties: dict, catalog: tuple[Metric, ...] = DEFAULT_CATALOG) -> list[tuple[str, float]]:
    """The (metric code, value) pairs one event contributes to the detectors.

    COUNT contributes 1; SUM and MAX the numeric value of their property
    (events without it, or with a non-numeric one, contribute nothing);
    other aggregations are not observed (see DETECTOR_COMBINE).
    """
    out: list[tuple[str, float]] = []
    for metric in catalog:
        if metric.event_type != event_type or metric.aggregation not in DETECTOR_COMBINE:
            continue
        if metric.aggregation is Aggregation.COUNT:
            out.append((metric.code, 1.0))
            continue
        value = properties.get(metric.property)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out.append((metric.code, float(value)))
        elif isinstance(value, str):
            try:
                out.append((metric.code, float(value)))
            except ValueError:
                continue
    return out
