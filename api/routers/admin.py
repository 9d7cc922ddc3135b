"""Provisioning of API keys (admin token required when one is configured)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from api import keys
from api.deps import ClientsDep, require_admin

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])


class CreateKeyRequest(BaseModel):
    customer_id: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-]+$")]
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


@router.post("/keys", response_model=CreateKeyResponse, status_code=201)
def create_key(body: CreateKeyRequest, clients: ClientsDep) -> CreateKeyResponse:
    """Create a key; the raw key appears in this response only."""
    raw_key, record = keys.create_key(clients.redis, body.customer_id, body.name)
    return CreateKeyResponse(
        api_key=raw_key, customer_id=record.customer_id, name=record.name, created_at=record.created_at
    )


@router.post("/keys/revoke", response_model=RevokeKeyResponse)
def revoke_key(body: RevokeKeyRequest, clients: ClientsDep) -> RevokeKeyResponse:
    if not keys.revoke_key(clients.redis, body.api_key):
        raise HTTPException(404, "no such API key")
    return RevokeKeyResponse(revoked=True)
