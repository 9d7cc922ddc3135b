"""Usage queries: GET /v1/usage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.schemas import CustomerId, EpochMs, ExactJSONResponse, JsonDecimal
from api.usage import query_usage
from operators.metrics import catalog_by_code

router = APIRouter(prefix="/v1", tags=["usage"])


class Period(BaseModel):
    start: int
    end: int


class UsageResponse(BaseModel):
    customer_id: str
    metric: str
    period: Period
    value: JsonDecimal
    unit: str
    breakdown: dict[str, JsonDecimal] | None = None


@router.get("/usage", response_model=UsageResponse, response_model_exclude_none=True, response_class=ExactJSONResponse)
def get_usage(
    key: ApiKeyDep,
    clients: ClientsDep,
    customer_id: Annotated[CustomerId, Query()],
    metric: Annotated[str, Query(max_length=100)],
    start: Annotated[EpochMs, Query()],
    end: Annotated[EpochMs, Query()],
    group_by: Annotated[str | None, Query(max_length=255)] = None,
) -> UsageResponse:
    """`metric` for `customer_id` over [start, end] (ms, inclusive); `group_by`
    adds a breakdown by the values of that event property."""
    ensure_own_customer(key, customer_id)
    found = catalog_by_code().get(metric)
    if found is None:
        raise HTTPException(404, f"unknown metric '{metric}' (see GET /v1/metrics)")
    if start > end:
        raise HTTPException(400, "start must not be after end")
    try:
        usage = query_usage(
            clients.clickhouse, clients.settings.clickhouse_database, found, customer_id, start, end, group_by
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return UsageResponse(
        customer_id=customer_id,
        metric=metric,
        period=Period(start=start, end=end),
        value=usage.value,
        unit=found.unit,
        breakdown=usage.breakdown,
    )
