"""Alerts raised by the streaming detectors: GET /v1/alerts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.alerts import AlertFilter, list_alerts
from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.schemas import CustomerId, EpochMs

router = APIRouter(prefix="/v1", tags=["alerts"])

AlertKind = Literal["fraud_pattern", "usage_spike", "daily_anomaly"]


class Window(BaseModel):
    start: int
    end: int


class AlertOut(BaseModel):
    alert_id: str
    customer_id: str
    metric: str
    kind: AlertKind
    severity: Literal["warning", "critical"]
    score: float | None  # similarity for fraud_pattern, Z-score otherwise; None = unbounded
    window: Window
    evidence: dict[str, Any]
    created_at: int
    event_time: int


class AlertList(BaseModel):
    customer_id: str
    alerts: list[AlertOut]


@router.get("/alerts", response_model=AlertList)
def get_alerts(
    key: ApiKeyDep,
    clients: ClientsDep,
    customer_id: Annotated[CustomerId, Query()],
    since: Annotated[EpochMs, Query(description="only alerts created at or after (Unix ms)")] = 0,
    kind: Annotated[AlertKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlertList:
    """The customer's alerts, newest first."""
    ensure_own_customer(key, customer_id)
    found = list_alerts(
        clients.clickhouse,
        clients.settings.clickhouse_database,
        AlertFilter(customer_id=customer_id, since_ms=since, kind=kind, limit=limit),
    )
    return AlertList(customer_id=customer_id, alerts=[AlertOut.model_validate(a) for a in found])
