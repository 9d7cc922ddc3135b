"""Signed webhook delivery with retries, backoff and dead letters.

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
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Callable

import httpx
import orjson
import redis
import structlog

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
class DeliveryResult:
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None


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


def _retriable(status: int) -> bool:
    return status >= 500 or status in RETRIABLE_STATUS


def deliver(
    client: httpx.Client,
    url: str,
    event: WebhookEvent,
    secret: str = "",
    attempts: int = 5,
    first_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """POST `event` to `url` until a 2xx, a final refusal or `attempts` tries."""
    backoff = first_backoff_s
    result = DeliveryResult(False, 0)
    for attempt in range(1, attempts + 1):
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: event.event_type,
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), event.body)
        try:
            response = client.post(url, content=event.body, headers=headers)
        except httpx.HTTPError as exc:
            result = DeliveryResult(False, attempt, None, f"{type(exc).__name__}: {exc}")
        else:
            if 200 <= response.status_code < 300:
                return DeliveryResult(True, attempt, response.status_code)
            result = DeliveryResult(False, attempt, response.status_code, f"HTTP {response.status_code}")
            if not _retriable(response.status_code):
                break
        if attempt < attempts:
            log.warning("webhook_retry", event_id=event.event_id, attempt=attempt, error=result.error)
            sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
    return result


def dead_letter(client: redis.Redis, url: str, event: WebhookEvent, result: DeliveryResult) -> None:
    record = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "url": url,
        "attempts": result.attempts,
        "status": result.status,
        "error": result.error,
        "failed_at": int(time.time() * 1000),
        "body": event.body.decode(),
    }
    client.lpush(DEAD_LETTERS_KEY, orjson.dumps(record))
    log.error("webhook_dead_letter", event_id=event.event_id, url=url, attempts=result.attempts, error=result.error)
