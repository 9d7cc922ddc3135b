"""Signed webhook attempts, the retry policy, and dead letters.

A receiver can trust and deduplicate what it gets:

- `X-MeterFlow-Signature: t=<unix s>,v1=<hex>` where hex is
  HMAC-SHA256(secret, "<t>.<body>"), as Stripe signs its webhooks (the
  timestamp lets receivers refuse replays of old deliveries);
- `X-MeterFlow-Event-Id` is the same on every retry of one event, so a
  receiver that sees it twice can drop the second.

Retries: connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff up to `attempts` tries; any other answer is final. An
event that was never accepted is kept as a dead letter (Redis list
`webhook:dead`, newest first), never dropped silently.

`attempt` (one POST, classified) and `RetryPolicy.retry_after` (what to do
next) are the whole delivery logic: the outbox worker
(meterflow.webhook_outbox) runs one attempt per claim and leaves the
waiting to its schedule, so no sender ever sleeps on one endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass

import httpx
import orjson
import redis
import structlog

from meterflow.settings import Settings

log = structlog.get_logger(__name__)

DEAD_LETTERS_KEY = "webhook:dead"
SIGNATURE_HEADER = "X-MeterFlow-Signature"
EVENT_ID_HEADER = "X-MeterFlow-Event-Id"
EVENT_TYPE_HEADER = "X-MeterFlow-Event-Type"
RETRIABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    event_type: str  # e.g. "alert.triggered"
    body: bytes  # JSON


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST."""

    delivered: bool
    retriable: bool  # worth another try (connection error, timeout, 408, 429, 5xx)
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(settings.webhook_attempts, settings.webhook_first_backoff_s, settings.webhook_max_backoff_s)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed try number `attempt` (1-based): doubling, capped."""
        return min(self.first_backoff_s * 2 ** (attempt - 1), self.max_backoff_s)

    def retry_after(self, attempt: int, outcome: Attempt) -> float | None:
        """Seconds until the next try after try number `attempt`, or None when
        `outcome` is final: delivered, refused for good, or the last try."""
        if outcome.delivered or not outcome.retriable or attempt >= self.attempts:
            return None
        return self.backoff_s(attempt)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does with the signature header (also used by tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def non_public_address(host: str) -> str | None:
    """An address `host` resolves to that is not public (loopback, private,
    link-local such as cloud metadata, reserved), or None. A customer's
    endpoint must not make MeterFlow POST into its own network. A name that
    does not resolve is None here: the delivery then fails and is retried."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not address.is_global:
            return str(address)
    return None


def attempt(client: httpx.Client, url: str, event: WebhookEvent, secret: str = "") -> Attempt:
    """POST `event` to `url` once, freshly signed (unsigned when `secret` is empty).

    The response body is never read: only the status counts, and a receiver
    must not be able to make the sender buffer an endless answer.
    """
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id, EVENT_TYPE_HEADER: event.event_type}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), event.body)
    try:
        with client.stream("POST", url, content=event.body, headers=headers) as response:
            status = response.status_code
    except httpx.InvalidURL as exc:  # no later try can fix the address
        return Attempt(False, False, None, f"InvalidURL: {exc}")
    except httpx.HTTPError as exc:
        return Attempt(False, True, None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Attempt(True, False, status)
    return Attempt(False, status >= 500 or status in RETRIABLE_STATUS, status, f"HTTP {status}")


def dead_letter(
    client: redis.Redis,
    url: str,
    event: WebhookEvent,
    result: DeliveryResult,
    endpoint_id: str,
    customer_id: str,
) -> None:
    """Keep an event no try got accepted. `client` may be a pipeline, so the
    letter can be written in one transaction with the delivery's final state."""
    record = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "endpoint_id": endpoint_id,
        "customer_id": customer_id,
        "url": url,
        "attempts": result.attempts,
        "status": result.status,
        "error": result.error,
        "failed_at": int(time.time() * 1000),
        "body": event.body.decode(),
    }
    client.lpush(DEAD_LETTERS_KEY, orjson.dumps(record))
    log.error(
        "webhook_dead_letter",
        event_id=event.event_id,
        endpoint_id=endpoint_id,
        url=url,
        attempts=result.attempts,
        error=result.error,
    )
