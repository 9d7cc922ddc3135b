"""What routes depend on: the shared clients, and the caller's identity."""

from __future__ import annotations

import hmac
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Iterator

import redis
import structlog
from clickhouse_connect.driver.client import Client as ClickHouseClient
from confluent_kafka import Producer
from fastapi import Depends, Header, HTTPException, Request
from minio import Minio

from api import keys, metrics
from api.errors import ServiceUnavailable
from api.exposure import PROXY_HEADERS, host_header_is_loopback, is_loopback
from api.ratelimit import RateLimiter
from meterflow.clients import clickhouse_client, kafka_producer, redis_client, s3_client
from meterflow.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Clients:
    """The API process's connections, made once at start-up."""

    settings: Settings
    redis: redis.Redis
    rate_limiter: RateLimiter  # per customer (X-API-Key routes)
    admin_rate_limiter: RateLimiter  # per client address (/v1/admin/*)
    s3: Minio  # makes no connection until used
    _producer: Producer
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _clickhouse: ClickHouseClient | None = None

    @classmethod
    def connect(cls, settings: Settings) -> "Clients":
        redis_conn = redis_client(settings)
        return cls(
            settings=settings,
            redis=redis_conn,
            rate_limiter=RateLimiter(
                redis_conn, settings.rate_limit_requests, settings.rate_limit_window_s
            ),
            admin_rate_limiter=RateLimiter(
                redis_conn, settings.admin_rate_limit_requests, settings.admin_rate_limit_window_s
            ),
            s3=s3_client(settings),
            _producer=kafka_producer(settings),
        )

    @property
    def clickhouse(self) -> ClickHouseClient:
        """Connected on first use, so the API starts (and ingests) while
        ClickHouse is still down; queries then answer 503."""
        if self._clickhouse is None:
            with self._lock:
                if self._clickhouse is None:
                    try:
                        self._clickhouse = clickhouse_client(self.settings)
                    except Exception as exc:  # noqa: BLE001 - connect errors vary by transport
                        raise ServiceUnavailable(f"ClickHouse unavailable: {exc}") from exc
        return self._clickhouse

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
        with self._lock:
            if self._producer is failed:
                log.warning("kafka_producer_replaced")
                self._producer = kafka_producer(self.settings)

    def close(self) -> None:
        self._producer.flush(self.settings.kafka_produce_timeout_s)
        self.redis.close()
        if self._clickhouse is not None:
            self._clickhouse.close()


@contextmanager
def store(what: str) -> Iterator[None]:
    """Redis errors inside become a 503 that names `what`: the request may
    be repeated once Redis is back."""
    try:
        yield
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"{what} unavailable: {exc}") from exc


def get_clients(request: Request) -> Clients:
    return request.app.state.clients


ClientsDep = Annotated[Clients, Depends(get_clients)]


def _admit(request: Request, limiter: RateLimiter, subject: str) -> None:
    """Count the request against `subject`'s window; 429 past the limit.

    The limit's headers go to `request.state`, from where a middleware puts
    them on the response, error responses included.
    """
    decision = limiter.hit(subject)
    request.state.rate_limit_headers = decision.headers()
    if not decision.allowed:
        metrics.RATE_LIMITED.inc()
        raise HTTPException(
            429,
            f"rate limit of {decision.limit} requests per {decision.window_s} s exceeded",
            headers={"Retry-After": str(decision.retry_after_s)},
        )


def require_api_key(
    request: Request,
    clients: ClientsDep,
    x_api_key: Annotated[str | None, Header()] = None,
) -> keys.ApiKeyRecord:
    """The caller's key, after the customer's rate limit admitted the request."""
    if not x_api_key:
        raise HTTPException(401, "missing X-API-Key header")
    with store("key store"):
        record = keys.lookup_key(clients.redis, x_api_key)
        if record is None:
            raise HTTPException(401, "invalid or revoked API key")
        _admit(request, clients.rate_limiter, record.customer_id)
    return record


ApiKeyDep = Annotated[keys.ApiKeyRecord, Depends(require_api_key)]


def ensure_own_customer(key: keys.ApiKeyRecord, customer_id: str) -> None:
    """A key reads and writes only its own customer's data."""
    if customer_id != key.customer_id:
        raise HTTPException(403, "this API key may not access another customer's data")


def require_admin(
    request: Request,
    clients: ClientsDep,
    x_admin_token: Annotated[str | None, Header()] = None,
) -> None:
    """Admit an admin request: within the admin rate limit (per client
    address, counted before the token so guesses are limited too), then
    with the exact token, or, when none is configured, only over loopback.

    Without a token the API refuses to start unless it listens on loopback
    (api.exposure.check_admin_exposure); here each request must also have
    arrived on a loopback address, name loopback in its Host header and
    carry no proxy's forwarding header, so neither a server started some other
    way, nor a browser page using DNS rebinding, nor a reverse proxy on the
    same machine (which connects over loopback) lets anyone else in.
    """
    client = request.client.host if request.client else "unknown"
    with store("rate limit store"):
        _admit(request, clients.admin_rate_limiter, f"admin:{client}")
    expected = clients.settings.admin_token
    if expected:
        if not x_admin_token or not hmac.compare_digest(x_admin_token.encode(), expected.encode()):
            raise HTTPException(401, "missing or invalid X-Admin-Token")
        return
    server = request.scope.get("server") or ("", None)
    if not is_loopback(str(server[0])):
        raise HTTPException(403, "ADMIN_TOKEN is not set: admin routes answer only connections to a loopback address")
    forwarded = [name for name in PROXY_HEADERS if name in request.headers]
    if forwarded:
        raise HTTPException(
            403,
            f"ADMIN_TOKEN is not set: admin routes answer no request passed on by a proxy ({forwarded[0]}); "
            "set ADMIN_TOKEN to serve them behind one",
        )
    host = request.headers.get("host")
    if not host_header_is_loopback(host):
        raise HTTPException(
            403,
            f"ADMIN_TOKEN is not set: admin routes answer only requests for localhost, 127.0.0.1 or [::1], "
            f"not for Host {(host or '')[:100]!r}",
        )
