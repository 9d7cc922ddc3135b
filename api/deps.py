"""What routes depend on: the shared clients, and the caller's identity."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated

import redis
import structlog
from confluent_kafka import Producer
from fastapi import Depends, Header, HTTPException, Request

from api import keys
from api.errors import ServiceUnavailable
from meterflow.clients import kafka_producer, redis_client
from meterflow.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Clients:
    """The API process's connections, made once at start-up."""

    settings: Settings
    redis: redis.Redis
    _producer: Producer
    _producer_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def connect(cls, settings: Settings) -> "Clients":
        return cls(settings=settings, redis=redis_client(settings), _producer=kafka_producer(settings))

    @property
    def producer(self) -> Producer:
        return self._producer

    def replace_producer(self, failed: Producer) -> None:
        """Start over with a fresh producer after a failed delivery.

        An idempotent producer whose messages failed can stay stuck for good:
        fenced by a fatal error, or retrying a producer id that a restarted
        broker no longer knows. A new producer asks for a new id. Requests
        still waiting on the old one keep their reference until they finish.
        """
        with self._producer_lock:
            if self._producer is failed:
                log.warning("kafka_producer_replaced")
                self._producer = kafka_producer(self.settings)

    def close(self) -> None:
        self._producer.flush(self.settings.kafka_produce_timeout_s)
        self.redis.close()


def get_clients(request: Request) -> Clients:
    return request.app.state.clients


ClientsDep = Annotated[Clients, Depends(get_clients)]


def require_api_key(
    clients: ClientsDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> keys.ApiKeyRecord:
    if not x_api_key:
        raise HTTPException(401, "missing X-API-Key header")
    try:
        record = keys.lookup_key(clients.redis, x_api_key)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"key store unavailable: {exc}") from exc
    if record is None:
        raise HTTPException(401, "invalid or revoked API key")
    return record


ApiKeyDep = Annotated[keys.ApiKeyRecord, Depends(require_api_key)]


def require_admin(
    clients: ClientsDep,
    x_admin_token: Annotated[str | None, Header()] = None,
) -> None:
    expected = clients.settings.admin_token
    if not expected:
        return  # local development: open, warned about at start-up
    if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), expected.encode()):
        raise HTTPException(401, "missing or invalid X-Admin-Token")
