"""API keys: random, shown once, stored only as SHA-256 in Redis, revocable.

Redis layout:

    apikey:<sha256 hex>        hash  customer_id, name, created_at, key_id, prefix
                                     and, once revoked, revoked_at
    apikeys:<customer_id>      hash  key_id -> sha256 hex of each of the customer's keys

Lookups hash the presented key, so the raw key never touches storage or
logs. A key also has a public id (`key_...`, random, unrelated to the key)
and its first characters (`prefix`), so an admin can list a customer's keys
and revoke one without ever holding it; neither reveals the key or its hash.
Keys made before ids existed have neither: they are not listed and are
revoked by the raw key only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

KEY_PREFIX = "mf_"
REDIS_PREFIX = "apikey:"
CUSTOMER_INDEX_PREFIX = "apikeys:"
SHOWN_CHARS = 8  # of the random part, after KEY_PREFIX: enough to tell keys apart, 48 of 256 bits


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    customer_id: str
    name: str
    created_at: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What an admin may see of a key: never the key or its hash."""

    key_id: str
    name: str
    prefix: str
    created_at: str
    revoked_at: str | None


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def create_key(client: redis.Redis, customer_id: str, name: str) -> tuple[str, ApiKeyRecord]:
    """Make a new key for `customer_id`; returns the raw key (only now) and
    its record. Record and index are written in one transaction."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(raw_key)
    key_id = "key_" + secrets.token_hex(12)
    record = ApiKeyRecord(customer_id=customer_id, name=name, created_at=_now())
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        REDIS_PREFIX + digest,
        mapping={
            "customer_id": customer_id,
            "name": name,
            "created_at": record.created_at,
            "key_id": key_id,
            "prefix": raw_key[: len(KEY_PREFIX) + SHOWN_CHARS],
        },
    )
    pipe.hset(CUSTOMER_INDEX_PREFIX + customer_id, key_id, digest)
    pipe.execute()
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


def _mark_revoked(client: redis.Redis, redis_key: str) -> bool:
    """Mark a key revoked (kept for audit; the first revocation's time stays);
    False when no such key exists."""
    if not client.exists(redis_key):
        return False
    client.hsetnx(redis_key, "revoked_at", _now())
    return True


def revoke_key(client: redis.Redis, raw_key: str) -> bool:
    """Revoke by the key itself; False when no such key exists."""
    return _mark_revoked(client, REDIS_PREFIX + hash_key(raw_key))


def revoke_key_by_id(client: redis.Redis, customer_id: str, key_id: str) -> bool:
    """Revoke one of `customer_id`'s keys by its id; False when the customer
    has no key with that id."""
    digest = client.hget(CUSTOMER_INDEX_PREFIX + customer_id, key_id)
    return digest is not None and _mark_revoked(client, REDIS_PREFIX + digest.decode())


def list_keys(client: redis.Redis, customer_id: str) -> list[KeyInfo]:
    """The customer's keys, live and revoked, oldest first."""
    index = client.hgetall(CUSTOMER_INDEX_PREFIX + customer_id)
    pipe = client.pipeline(transaction=False)
    for digest in index.values():
        pipe.hmget(REDIS_PREFIX + digest.decode(), ["key_id", "name", "prefix", "created_at", "revoked_at"])
    found = []
    for key_id, name, prefix, created_at, revoked_at in pipe.execute():
        if key_id is None:  # the record is gone (deleted by hand): nothing to show
            continue
        found.append(
            KeyInfo(
                key_id=key_id.decode(),
                name=name.decode(),
                prefix=prefix.decode(),
                created_at=created_at.decode(),
                revoked_at=revoked_at.decode() if revoked_at else None,
            )
        )
    return sorted(found, key=lambda k: (k.created_at, k.key_id))
