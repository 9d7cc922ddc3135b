"""Liveness and readiness, with the state of each dependency.

The dataflow is one of them: an API whose events are accepted but not
stored is degraded. Its state comes from the heartbeats each dataflow
process keeps in Redis (meterflow.flow_progress): "stalled" when one of
them has a backlog and makes no progress, "down" when none is alive.
Neither makes the API unready: ingest itself still works, and what it
accepts is read once the dataflow moves again.
"""

from __future__ import annotations

from typing import Literal

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import ClientsDep
from meterflow import flow_progress

router = APIRouter(tags=["health"])

DependencyState = Literal["ok", "down", "stalled"]


# Ingest needs these; without ClickHouse the API still ingests (queries
# answer 503), so ClickHouse makes the API degraded but not unready.
INGEST_DEPENDENCIES = ("redis", "kafka")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    ready: bool  # ingest works: every dependency of POST /v1/events answers
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
    try:
        deps["clickhouse"] = "ok" if clients.clickhouse.ping() else "down"
    except Exception:  # noqa: BLE001
        deps["clickhouse"] = "down"
    deps["dataflow"] = _dataflow_state(clients) if deps["redis"] == "ok" else "down"
    status = "ok" if all(v == "ok" for v in deps.values()) else "degraded"
    ready = all(deps[name] == "ok" for name in INGEST_DEPENDENCIES)
    return HealthResponse(status=status, ready=ready, dependencies=deps)


def _dataflow_state(clients: ClientsDep) -> DependencyState:
    try:
        beats = flow_progress.read_all(clients.redis, clients.settings.topic_events)
    except redis.RedisError:  # an unreadable heartbeat is no heartbeat
        return "down"
    if not beats:
        return "down"
    return "stalled" if any(beat.stalled for beat in beats) else "ok"


@router.get("/health", response_model=HealthResponse)
def health(clients: ClientsDep) -> HealthResponse:
    """Always 200 while the process serves; `status` says whether all dependencies answer."""
    return _check(clients)


@router.get("/health/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def ready(clients: ClientsDep) -> JSONResponse:
    """503 while ingest cannot work (Redis or the broker down), for orchestrators;
    a ClickHouse outage only makes the API degraded (queries 503, ingest goes on)."""
    report = _check(clients)
    return JSONResponse(report.model_dump(), status_code=200 if report.ready else 503)
