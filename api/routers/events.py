"""Ingestion: POST /v1/events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api import metrics
from api.deps import ApiKeyDep, ClientsDep
from api.ingest import ingest_events
from operators.metrics import DEFAULT_METERED, QUANTITY_MAX, QUANTITY_SCALE

router = APIRouter(prefix="/v1", tags=["events"])


_METERED_NAMES = ", ".join(
    f"{prop} of {event_type}" for event_type, props in DEFAULT_METERED.items() for prop, _ in props
)
METERED_DESCRIPTION = (
    "Metered properties (the value property of a SUM, MAX, AVG or LATEST metric of the event's type: "
    f"{_METERED_NAMES}) are quantities: a number or a plain decimal string, at most {QUANTITY_SCALE} "
    f"digits after the point, at most {QUANTITY_MAX}, not negative unless the metric allows credits. "
    "See docs/api.md, Quantities."
)


class EventBatch(BaseModel):
    """1 to 1000 events. Each is checked on its own: one bad event is reported
    in `failed` and does not fail the batch."""

    events: list[Any] = Field(
        min_length=1,
        max_length=1000,
        json_schema_extra={
            "items": {
                "type": "object",
                "required": ["transaction_id", "customer_id", "event_type", "timestamp"],
                "properties": {
                    "transaction_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
                    "customer_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
                    "event_type": {"type": "string", "minLength": 1, "maxLength": 100},
                    "timestamp": {"type": "number", "description": "Unix epoch milliseconds"},
                    "properties": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "number", "boolean"]},
                        "description": METERED_DESCRIPTION,
                    },
                },
            }
        },
    )


class FailedEvent(BaseModel):
    transaction_id: str
    reason: str


class IngestResponse(BaseModel):
    accepted: int
    duplicates: int
    failed: list[FailedEvent]


@router.post("/events", response_model=IngestResponse)
def post_events(batch: EventBatch, key: ApiKeyDep, clients: ClientsDep) -> IngestResponse:
    """Accept a batch of usage events; answers after the broker acknowledged them."""
    result = ingest_events(clients, batch.events, key.customer_id)
    metrics.count_ingest(result.accepted, result.duplicates, [reason for _, reason in result.failed])
    return IngestResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        failed=[FailedEvent(transaction_id=t, reason=r) for t, r in result.failed],
    )
