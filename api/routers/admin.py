"""Provisioning of API keys: create, list, revoke.

Every route is behind api.deps.require_admin: the admin rate limit, then
the token (or, with none configured, loopback only).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from api import keys
from api.deps import ClientsDep, require_admin, store
from api.schemas import CustomerId

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

KeyId = Annotated[str, Path(min_length=5, max_length=64, pattern=r"^key_[0-9a-f]+$")]


class CreateKeyRequest(BaseModel):
    customer_id: CustomerId
    name: Annotated[str, Field(min_length=1, max_length=255)] = "default"


class CreateKeyResponse(BaseModel):
    api_key: str
    customer_id: str
    name: str
    created_at: str


class RevokeKeyRequest(BaseModel):
    api_key: Annotated[str, Field(min_length=1, max_length=512)]


class RevokeKeyResponse(BaseModel):
    revoked: bool


class KeyOut(BaseModel):
    key_id: str
    name: str
    prefix: str  # the key's first characters, to recognise it
    created_at: str
    revoked_at: str | None


class KeyList(BaseModel):
    customer_id: str
    keys: list[KeyOut]


@router.post("/keys", response_model=CreateKeyResponse, status_code=201)
def create_key(body: CreateKeyRequest, clients: ClientsDep) -> CreateKeyResponse:
    """Create a key; the raw key appears in this response only (the
    contract's shape; its id is in GET /v1/admin/keys, beside its prefix)."""
    with store("key store"):
        raw_key, record = keys.create_key(clients.redis, body.customer_id, body.name)
    return CreateKeyResponse(
        api_key=raw_key, customer_id=record.customer_id, name=record.name, created_at=record.created_at
    )


@router.get("/keys", response_model=KeyList)
def list_keys(clients: ClientsDep, customer_id: Annotated[CustomerId, Query()]) -> KeyList:
    """The customer's keys, live and revoked, oldest first: names, prefixes
    and times, never a key or its hash."""
    with store("key store"):
        found = keys.list_keys(clients.redis, customer_id)
    return KeyList(customer_id=customer_id, keys=[KeyOut.model_validate(k, from_attributes=True) for k in found])


@router.post("/keys/revoke", response_model=RevokeKeyResponse)
def revoke_key(body: RevokeKeyRequest, clients: ClientsDep) -> RevokeKeyResponse:
    """Revoke by the raw key (who holds it may hand it in)."""
    with store("key store"):
        revoked = keys.revoke_key(clients.redis, body.api_key)
    if not revoked:
        raise HTTPException(404, "no such API key")
    return RevokeKeyResponse(revoked=True)


@router.delete("/keys/{key_id}", response_model=RevokeKeyResponse)
def revoke_key_by_id(
    clients: ClientsDep, key_id: KeyId, customer_id: Annotated[CustomerId, Query()]
) -> RevokeKeyResponse:
    """Revoke one of the customer's keys by its id (from the list); the
    record stays, marked revoked, for audit."""
    with store("key store"):
        revoked = keys.revoke_key_by_id(clients.redis, customer_id, key_id)
    if not revoked:
        raise HTTPException(404, "this customer has no API key with that id")
    return RevokeKeyResponse(revoked=True)
