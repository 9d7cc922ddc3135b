"""Liveness and readiness, with the state of each dependency."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import ClientsDep

router = APIRouter(tags=["health"])

DependencyState = Literal["ok", "down"]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    dependencies: dict[str, DependencyState]


def _check(clients: ClientsDep) -> HealthResponse:
    deps: dict[str, DependencyState] = {}
    try:
        clients.redis.ping()
        deps["redis"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means "down"
        deps["redis"] = "down"
    try:
        clients.producer.list_topics(clients.settings.topic_events, timeout=1.0)
        deps["kafka"] = "ok"
    except Exception:  # noqa: BLE001
        deps["kafka"] = "down"
    status = "ok" if all(v == "ok" for v in deps.values()) else "degraded"
    return HealthResponse(status=status, dependencies=deps)


@router.get("/health", response_model=HealthResponse)
def health(clients: ClientsDep) -> HealthResponse:
    """Always 200 while the process serves; `status` says whether all dependencies answer."""
    return _check(clients)


@router.get("/health/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def ready(clients: ClientsDep) -> JSONResponse:
    """503 until every dependency answers (for orchestrators)."""
    report = _check(clients)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)
