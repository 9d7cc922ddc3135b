"""API keys: random, shown once, stored only as SHA-256 in Redis, revocable.

Redis layout: hash `apikey:<sha256 hex>` with customer_id, name, created_at
and, once revoked, revoked_at. Lookups hash the presented key, so the raw
key never touches storage or logs.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

KEY_PREFIX = "mf_"
REDIS_PREFIX = "apikey:"


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    customer_id: str
    name: str
    created_at: str


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_key(client: redis.Redis, customer_id: str, name: str) -> tuple[str, ApiKeyRecord]:
    """Make a new key for `customer_id`; returns the raw key (only now) and its record."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        customer_id=customer_id,
        name=name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    client.hset(
        REDIS_PREFIX + hash_key(raw_key),
        mapping={"customer_id": customer_id, "name": name, "created_at": record.created_at},
    )
    return raw_key, record


def lookup_key(client: redis.Redis, raw_key: str) -> ApiKeyRecord | None:
    """The record of a live key, or None for an unknown or revoked one."""
    fields = client.hgetall(REDIS_PREFIX + hash_key(raw_key))
    if not fields or b"revoked_at" in fields:
        return None
    return ApiKeyRecord(
        customer_id=fields[b"customer_id"].decode(),
        name=fields[b"name"].decode(),
        created_at=fields[b"created_at"].decode(),
    )


def revoke_key(client: redis.Redis, raw_key: str) -> bool:
    """Mark a key revoked (kept for audit); False when no such key exists."""
    redis_key = REDIS_PREFIX + hash_key(raw_key)
    if not client.exists(redis_key):
        return False
    client.hset(redis_key, "revoked_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return True
