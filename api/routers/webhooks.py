"""Customer webhook endpoints and their deliveries: /v1/webhooks.

The registry and the outbox are meterflow.webhook_outbox; this router only
checks who asks. A customer sees and changes its own endpoints only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Iterator

import httpx
import redis
from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field, field_validator

from api.deps import ApiKeyDep, ClientsDep, ensure_own_customer
from api.errors import ServiceUnavailable
from api.schemas import CustomerId
from meterflow import webhook_outbox as outbox
from meterflow.webhook_outbox import DeliveryStatus, EventType
from meterflow.webhooks import non_public_address

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

EndpointId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


class CreateEndpointRequest(BaseModel):
    customer_id: CustomerId
    url: Annotated[str, Field(min_length=1, max_length=2048, description="http(s) URL the events are POSTed to")]
    events: Annotated[list[EventType], Field(min_length=1, max_length=len(outbox.EVENT_TYPES))]

    @field_validator("url")
    @classmethod
    def _deliverable(cls, url: str) -> str:
        return outbox.check_url(url)


class EndpointOut(BaseModel):
    id: str
    customer_id: str
    url: str
    events: list[EventType]
    secret: str  # whsec_...: verifies this endpoint's X-MeterFlow-Signature
    created_at: int  # Unix ms


class EndpointList(BaseModel):
    customer_id: str
    endpoints: list[EndpointOut]


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: int
    next_attempt_at: int | None
    updated_at: int


class DeliveryList(BaseModel):
    customer_id: str
    deliveries: list[DeliveryOut]


@contextmanager
def _store() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"webhook store unavailable: {exc}") from exc


def _out(endpoint: outbox.Endpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        customer_id=endpoint.customer_id,
        url=endpoint.url,
        events=list(endpoint.events),
        secret=endpoint.secret,
        created_at=endpoint.created_at,
    )


@router.post("", response_model=EndpointOut, status_code=201)
def create_endpoint(body: CreateEndpointRequest, key: ApiKeyDep, clients: ClientsDep) -> EndpointOut:
    """Register an endpoint; its signing secret is generated here."""
    ensure_own_customer(key, body.customer_id)
    if not clients.settings.webhook_allow_private_urls:
        address = non_public_address(httpx.URL(body.url).host)
        if address is not None:
            raise HTTPException(422, f"url: resolves to {address}, which is not a public address")
    with _store():
        try:
            endpoint = outbox.create_endpoint(clients.redis, body.customer_id, body.url, list(body.events))
        except outbox.TooManyEndpoints as exc:
            raise HTTPException(409, str(exc)) from exc
    return _out(endpoint)


@router.get("", response_model=EndpointList)
def list_endpoints(key: ApiKeyDep, clients: ClientsDep, customer_id: Annotated[CustomerId, Query()]) -> EndpointList:
    """The customer's endpoints, oldest first, with their secrets (as Stripe shows them)."""
    ensure_own_customer(key, customer_id)
    with _store():
        endpoints = outbox.list_endpoints(clients.redis, customer_id)
    return EndpointList(customer_id=customer_id, endpoints=[_out(e) for e in endpoints])


@router.get("/deliveries", response_model=DeliveryList)
def list_deliveries(
    key: ApiKeyDep,
    clients: ClientsDep,
    customer_id: Annotated[CustomerId, Query()],
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=outbox.DELIVERIES_LISTED)] = 100,
) -> DeliveryList:
    """The customer's recent deliveries, newest first: what is still pending,
    what was delivered, and what went dead after its last try."""
    ensure_own_customer(key, customer_id)
    with _store():
        found = outbox.list_deliveries(clients.redis, customer_id, status, limit)
    deliveries = [DeliveryOut.model_validate(d, from_attributes=True) for d in found]
    return DeliveryList(customer_id=customer_id, deliveries=deliveries)


@router.delete("/{endpoint_id}", status_code=204, response_class=Response)
def delete_endpoint(
    key: ApiKeyDep, clients: ClientsDep, endpoint_id: EndpointId, customer_id: Annotated[CustomerId, Query()]
) -> Response:
    """Delete an endpoint; its pending deliveries are dropped."""
    ensure_own_customer(key, customer_id)
    with _store():
        deleted = outbox.delete_endpoint(clients.redis, customer_id, endpoint_id)
    if not deleted:
        raise HTTPException(404, "no such webhook endpoint")
    return Response(status_code=204)
