"""Public reference data: the metrics catalog and the pricing rules."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, model_serializer

from api.schemas import ExactJSONResponse, JsonDecimal
from operators.metrics import DEFAULT_CATALOG, Metric
from operators.pricing import DEFAULT_PRICING, PricingRule, pricing_by_code

router = APIRouter(prefix="/v1", tags=["catalog"])


class MetricOut(BaseModel):
    code: str
    name: str
    event_type: str
    aggregation: Literal["COUNT", "SUM", "MAX", "AVG", "UNIQUE_COUNT", "LATEST"]
    property: str | None
    unit: str

    @classmethod
    def of(cls, metric: Metric) -> "MetricOut":
        return cls(
            code=metric.code,
            name=metric.name,
            event_type=metric.event_type,
            aggregation=metric.aggregation.value,
            property=metric.property,
            unit=metric.unit,
        )


class MetricsResponse(BaseModel):
    metrics: list[MetricOut]


class TierOut(BaseModel):
    up_to: JsonDecimal | None
    unit_price: JsonDecimal


class PricingRuleOut(BaseModel):
    metric_code: str
    model: Literal["flat", "tiered", "volume", "package"]
    currency: str
    unit_price: JsonDecimal | None = None
    tiers: list[TierOut] | None = None
    package_size: JsonDecimal | None = None

    @model_serializer(mode="wrap")
    def _omit_unused(self, handler):  # the fields a model does not use are left out
        return {k: v for k, v in handler(self).items() if v is not None}

    @classmethod
    def of(cls, rule: PricingRule) -> "PricingRuleOut":
        return cls(
            metric_code=rule.metric_code,
            model=rule.model.value,
            currency=rule.currency,
            unit_price=rule.unit_price,
            tiers=[TierOut(up_to=t.up_to, unit_price=t.unit_price) for t in rule.tiers] or None,
            package_size=rule.package_size,
        )


class PricingResponse(BaseModel):
    pricing: list[PricingRuleOut]


@router.get("/metrics", response_model=MetricsResponse)
def list_metrics() -> MetricsResponse:
    return MetricsResponse(metrics=[MetricOut.of(m) for m in DEFAULT_CATALOG])


@router.get("/pricing", response_model=PricingResponse, response_class=ExactJSONResponse)
def list_pricing() -> PricingResponse:
    return PricingResponse(pricing=[PricingRuleOut.of(rule) for rule in DEFAULT_PRICING])


@router.get("/pricing/{metric_code}", response_model=PricingRuleOut, response_class=ExactJSONResponse)
def get_pricing(metric_code: str) -> PricingRuleOut:
    rule = pricing_by_code().get(metric_code)
    if rule is None:
        raise HTTPException(404, f"no pricing rule for metric '{metric_code}'")
    return PricingRuleOut.of(rule)
