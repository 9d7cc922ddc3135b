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
