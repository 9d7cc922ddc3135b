"""Customer webhook endpoints and the outbox their deliveries wait in, in Redis.

Why an outbox: whoever has news (the billing run, the alerts consumer)
only `publish`es, which writes to Redis and returns; it never waits on a
customer's server. The webhook process (meterflow.webhook_worker) delivers.

Why a queue per endpoint: a worker claims an *endpoint* whose next delivery
is due and makes one attempt; while it does, no other worker takes that
endpoint. So a slow or dead endpoint occupies one worker at most, however
many events wait for it, and every other endpoint keeps being served. Its
waiting is done by the schedule (a retry's due time), never by a sleep.

Redis layout (times: zset scores in Unix seconds, hash fields in Unix ms):

    webhook:endpoint:<endpoint_id>    hash    id, customer_id, url, events (JSON), secret, created_at
    webhook:endpoints:<customer_id>   set     the customer's endpoint ids
    webhook:delivery:<delivery_id>    hash    endpoint_id, customer_id, event_id, event_type, body,
                                              status, attempts, last_status, last_error,
                                              created_at, next_attempt_at, updated_at
    webhook:queue:<endpoint_id>       zset    the endpoint's pending deliveries, by due time
    webhook:due                       zset    endpoints with pending deliveries, by the due time of
                                              their first; while claimed, by the end of the lease
    webhook:claim:<endpoint_id>       string  the claim's token, expiring with the lease
    webhook:deliveries:<customer_id>  zset    the customer's newest deliveries, by creation
    webhook:dead                      list    dead letters (meterflow.webhooks)

A delivery's id is a digest of (endpoint, event id), so publishing an event
again queues nothing: the delivery exists. Finished deliveries are kept for
DELIVERY_RETENTION_S, which is how long that holds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Literal, get_args

import httpx
import orjson
import redis
import structlog
from redis.client import Pipeline

from meterflow.webhooks import (
    Attempt, DeliveryResult, RetryPolicy, WebhookEvent, attempt, dead_letter,
)  # fmt: skip

log = structlog.get_logger(__name__)

EventType = Literal["invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_failed", "alert.triggered"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
ALERT_TRIGGERED = "alert.triggered"
DeliveryStatus = Literal["pending", "delivered", "dead"]

MAX_ENDPOINTS = 16  # per customer, as Stripe allows
DELIVERIES_LISTED = 1000  # newest deliveries kept in a customer's index
DELIVERY_RETENTION_S = 30 * 24 * 3600  # finished deliveries, and so their idempotency
# The operator's endpoint (ALERT_WEBHOOK_URL): stored like a customer's, owned by nobody.
OPERATOR_ENDPOINT_ID = "operator"

DUE_KEY = "webhook:due"
ENDPOINT_PREFIX = "webhook:endpoint:"
DELIVERY_PREFIX = "webhook:delivery:"


def _endpoints_key(customer_id: str) -> str:
    return f"webhook:endpoints:{customer_id}"


def _queue_key(endpoint_id: str) -> str:
    return f"webhook:queue:{endpoint_id}"


def _claim_key(endpoint_id: str) -> str:
    return f"webhook:claim:{endpoint_id}"


def _deliveries_key(customer_id: str) -> str:
    return f"webhook:deliveries:{customer_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class TooManyEndpoints(Exception):
    """The customer already has MAX_ENDPOINTS endpoints."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    customer_id: str  # the owner; "" for the operator's endpoint
    url: str
    events: tuple[str, ...]
    secret: str  # signs this endpoint's deliveries; "" = unsigned (operator without WEBHOOK_SECRET)
    created_at: int  # Unix ms

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> "Endpoint":
        return cls(
            id=fields[b"id"].decode(),
            customer_id=fields[b"customer_id"].decode(),
            url=fields[b"url"].decode(),
            events=tuple(orjson.loads(fields[b"events"])),
            secret=fields[b"secret"].decode(),
            created_at=int(fields[b"created_at"]),
        )

    def to_hash(self) -> dict[str, str | int | bytes]:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "url": self.url,
            "events": orjson.dumps(list(self.events)),
            "secret": self.secret,
            "created_at": self.created_at,
        }


DELIVERY_FIELDS = (
    "endpoint_id", "customer_id", "event_id", "event_type", "status", "attempts",
    "last_status", "last_error", "created_at", "next_attempt_at", "updated_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint, as stored (without its body)."""

    id: str
    endpoint_id: str
    customer_id: str  # whom the event is about
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status: int | None  # the HTTP status of the latest try; None before one or without an answer
    last_error: str | None
    created_at: int
    next_attempt_at: int | None  # pending only
    updated_at: int

    @classmethod
    def from_values(cls, delivery_id: str, values: list[bytes | None]) -> "Delivery":
        """From HMGET of DELIVERY_FIELDS, empty strings being None."""
        v = dict(zip(DELIVERY_FIELDS, (x.decode() if x else None for x in values)))
        return cls(
            id=delivery_id,
            endpoint_id=v["endpoint_id"] or "",
            customer_id=v["customer_id"] or "",
            event_id=v["event_id"] or "",
            event_type=v["event_type"] or "",
            status=v["status"],  # type: ignore[arg-type]  # written by this module only
            attempts=int(v["attempts"] or 0),
            last_status=int(v["last_status"]) if v["last_status"] else None,
            last_error=v["last_error"],
            created_at=int(v["created_at"] or 0),
            next_attempt_at=int(v["next_attempt_at"]) if v["next_attempt_at"] else None,
            updated_at=int(v["updated_at"] or 0),
        )


# -- endpoints ---------------------------------------------------------------


def check_url(url: str) -> str:
    """`url` if deliveries can be POSTed to it (http or https, with a host),
    judged by the HTTP client that will send them; ValueError otherwise."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return url


def _save_endpoint(client: redis.Redis, endpoint: Endpoint) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.delete(ENDPOINT_PREFIX + endpoint.id)  # a stale `events` list must not survive a replacement
    pipe.hset(ENDPOINT_PREFIX + endpoint.id, mapping=endpoint.to_hash())
    if endpoint.customer_id:
        pipe.sadd(_endpoints_key(endpoint.customer_id), endpoint.id)
    pipe.execute()


def create_endpoint(client: redis.Redis, customer_id: str, url: str, events: list[str]) -> Endpoint:
    """Register an endpoint with a fresh signing secret (shown to the customer,
    who needs it to verify). Raises TooManyEndpoints past MAX_ENDPOINTS."""
    if client.scard(_endpoints_key(customer_id)) >= MAX_ENDPOINTS:
        raise TooManyEndpoints(f"a customer may register at most {MAX_ENDPOINTS} webhook endpoints")
    endpoint = Endpoint(
        id="we_" + secrets.token_hex(12),
        customer_id=customer_id,
        url=check_url(url),
        events=tuple(dict.fromkeys(events)),
        secret="whsec_" + secrets.token_urlsafe(32),
        created_at=_now_ms(),
    )
    _save_endpoint(client, endpoint)
    log.info("webhook_endpoint_created", endpoint_id=endpoint.id, customer_id=customer_id, events=endpoint.events)
    return endpoint


def get_endpoint(client: redis.Redis, endpoint_id: str) -> Endpoint | None:
    fields = client.hgetall(ENDPOINT_PREFIX + endpoint_id)
    return Endpoint.from_hash(fields) if fields else None


def list_endpoints(client: redis.Redis, customer_id: str) -> list[Endpoint]:
    """The customer's endpoints, oldest first."""
    ids = sorted(client.smembers(_endpoints_key(customer_id)))
    pipe = client.pipeline(transaction=False)
    for endpoint_id in ids:
        pipe.hgetall(ENDPOINT_PREFIX + endpoint_id.decode())
    found = [Endpoint.from_hash(fields) for fields in pipe.execute() if fields]
    return sorted(found, key=lambda e: (e.created_at, e.id))


def _drop_delivery(pipe: Pipeline, delivery_id: str, endpoint_id: str, customer_id: str) -> None:
    """Forget a pending delivery everywhere (its endpoint is gone)."""
    pipe.delete(DELIVERY_PREFIX + delivery_id)
    pipe.zrem(_queue_key(endpoint_id), delivery_id)
    pipe.zrem(_deliveries_key(customer_id), delivery_id)


def _remove_endpoint(client: redis.Redis, endpoint: Endpoint) -> None:
    """Delete `endpoint` and drop its pending deliveries; an attempt under
    way finds its claim gone and writes nothing. A delivery queued meanwhile
    is dropped by the worker, which finds no endpoint for it."""
    pending = [d.decode() for d in client.zrange(_queue_key(endpoint.id), 0, -1)]
    pipe = client.pipeline(transaction=True)
    pipe.delete(ENDPOINT_PREFIX + endpoint.id)
    pipe.srem(_endpoints_key(endpoint.customer_id), endpoint.id)
    for delivery_id in pending:
        _drop_delivery(pipe, delivery_id, endpoint.id, endpoint.customer_id)
    pipe.zrem(DUE_KEY, endpoint.id)
    pipe.delete(_claim_key(endpoint.id))
    pipe.execute()
    log.info("webhook_endpoint_deleted", endpoint_id=endpoint.id, customer_id=endpoint.customer_id, dropped=len(pending))


def delete_endpoint(client: redis.Redis, customer_id: str, endpoint_id: str) -> bool:
    """Delete the customer's endpoint; False when it has none by that id
    (another customer's is none of its own)."""
    endpoint = get_endpoint(client, endpoint_id)
    if endpoint is None or endpoint.customer_id != customer_id:
        return False
    _remove_endpoint(client, endpoint)
    return True


def set_operator_endpoint(client: redis.Redis, url: str, secret: str) -> Endpoint | None:
    """Make the operator's endpoint what the settings say: `url` (receiving
    alert.triggered, signed with `secret`), or none when `url` is empty."""
    if not url:
        current = get_endpoint(client, OPERATOR_ENDPOINT_ID)
        if current is not None:
            _remove_endpoint(client, current)
        return None
    endpoint = Endpoint(OPERATOR_ENDPOINT_ID, "", check_url(url), (ALERT_TRIGGERED,), secret, _now_ms())
    _save_endpoint(client, endpoint)
    return endpoint


# -- publishing --------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Money is Decimal everywhere: written as an exact JSON number in plain
    notation, as the API writes it (api.schemas.exact_json)."""
    if isinstance(value, Decimal) and value.is_finite():
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def envelope(event_id: str, event_type: str, customer_id: str, data: dict[str, Any], created: int) -> bytes:
    """The body every customer endpoint receives (`created`: Unix seconds)."""
    body = {"id": event_id, "type": event_type, "created": created, "customer_id": customer_id, "data": data}
    return orjson.dumps(body, default=_json_default)


def delivery_id_for(endpoint_id: str, event_id: str) -> str:
    """The same event for the same endpoint is always the same delivery."""
    return "whd_" + hashlib.sha256(f"{endpoint_id}|{event_id}".encode()).hexdigest()[:32]


# KEYS: delivery hash, endpoint's queue, due, endpoint's claim[, owner's deliveries index]
# ARGV: delivery id, endpoint id, now (s), now (ms), index size, field, value, ...
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('ZADD', KEYS[3], 'LT', ARGV[3], ARGV[2])
end
if KEYS[5] then
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(tonumber(ARGV[5]) + 1))
end
return 1
"""


def enqueue(client: redis.Redis, endpoint: Endpoint, customer_id: str, event: WebhookEvent) -> bool:
    """Queue `event` (about `customer_id`) for `endpoint`, due now; False when
    this event was queued for it before. One script: the delivery is
    scheduled in the same step that takes its id. A claimed endpoint's due
    time is its lease, left alone: the claim's end reschedules it."""
    delivery_id = delivery_id_for(endpoint.id, event.event_id)
    now_ms = _now_ms()
    fields = {
        "endpoint_id": endpoint.id,
        "customer_id": customer_id,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "body": event.body,
        "status": "pending",
        "attempts": 0,
        "created_at": now_ms,
        "next_attempt_at": now_ms,
        "updated_at": now_ms,
    }
    keys = [DELIVERY_PREFIX + delivery_id, _queue_key(endpoint.id), DUE_KEY, _claim_key(endpoint.id)]
    if endpoint.customer_id:  # the operator's deliveries are listed to no customer
        keys.append(_deliveries_key(endpoint.customer_id))
    args = [delivery_id, endpoint.id, now_ms / 1000, now_ms, DELIVERIES_LISTED]
    args += [x for item in fields.items() for x in item]
    return bool(client.register_script(_ENQUEUE)(keys=keys, args=args))


def publish(client: redis.Redis, customer_id: str, event_type: str, event_id: str, data: dict) -> int:
    """Queue event `event_id` for each endpoint of `customer_id` subscribed to
    `event_type`; returns how many deliveries were newly queued (0 for an
    event id published before). Only Redis is written: delivery is the
    webhook process's job. After a RedisError some deliveries may be queued
    and others not: publish again, which queues only the missing ones.
    ValueError for an event type not in EVENT_TYPES."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    event = WebhookEvent(event_id, event_type, envelope(event_id, event_type, customer_id, data, int(time.time())))
    endpoints = [e for e in list_endpoints(client, customer_id) if event_type in e.events]
    queued = sum(enqueue(client, endpoint, customer_id, event) for endpoint in endpoints)
    log.info("webhook_published", customer_id=customer_id, event_type=event_type, event_id=event_id, queued=queued)
    return queued


def list_deliveries(
    client: redis.Redis, customer_id: str, status: DeliveryStatus | None = None, limit: int = 100
) -> list[Delivery]:
    """The customer's most recent deliveries (of the last DELIVERIES_LISTED), newest first."""
    ids = [d.decode() for d in client.zrevrange(_deliveries_key(customer_id), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hmget(DELIVERY_PREFIX + delivery_id, DELIVERY_FIELDS)
    found = []
    for delivery_id, values in zip(ids, pipe.execute()):
        if values[0] is None:  # expired or dropped since it was listed
            continue
        delivery = Delivery.from_values(delivery_id, values)
        if status is None or delivery.status == status:
            found.append(delivery)
    return found[:limit]


# -- delivering --------------------------------------------------------------

# KEYS: due; ARGV: now (s), end of the lease (s), lease (ms), claim token, queue key prefix, claim key prefix
# Returns {endpoint id, delivery id}, or nothing when no endpoint is due.
_CLAIM = """
while true do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
  if #due == 0 then return false end
  local endpoint = due[1]
  local head = redis.call('ZRANGE', ARGV[5] .. endpoint, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', KEYS[1], endpoint)
  elseif tonumber(head[2]) > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], head[2], endpoint)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], endpoint)
    redis.call('SET', ARGV[6] .. endpoint, ARGV[4], 'PX', ARGV[3])
    return {endpoint, head[1]}
  end
end
"""

# KEYS: due, endpoint's queue; ARGV: endpoint id. Due again when its first delivery is.
_RELEASE = """
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #head == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], head[2], ARGV[1])
end
"""


@dataclass(frozen=True, slots=True)
class Claim:
    endpoint_id: str
    delivery_id: str
    token: str


class Deliverer:
    """Runs due deliveries, one HTTP attempt per claim.

    A claim takes the endpoint whose first delivery is due, moves its due
    time to the end of a lease and stores a token that expires with it, in
    one script: two deliverers never work on one endpoint at once, and a
    deliverer killed mid-attempt leaves a claim that lapses, after which the
    delivery is tried again. The outcome is written, and the endpoint made
    due for its next delivery, in one transaction that only commits while
    the token is still there: a deliverer whose lease lapsed (a receiver
    slower than the lease) cannot undo what a later claim wrote.

    Customers' endpoints get `http`, which refuses non-public addresses when
    it connects (meterflow.webhooks.delivery_client); the operator's
    endpoint is trusted and gets `operator_http` (default: `http`).
    """

    def __init__(
        self,
        client: redis.Redis,
        http: httpx.Client,
        policy: RetryPolicy,
        lease_s: float,
        operator_http: httpx.Client | None = None,
    ) -> None:
        self._redis = client
        self._http = http
        self._operator_http = operator_http or http
        self._policy = policy
        self._lease_s = lease_s
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def run_once(self) -> bool:
        """Claim one due delivery and try it; False when none was due."""
        claim = self._take()
        if claim is None:
            return False
        key = DELIVERY_PREFIX + claim.delivery_id
        values, body = self._redis.pipeline(transaction=False).hmget(key, DELIVERY_FIELDS).hget(key, "body").execute()
        delivery = Delivery.from_values(claim.delivery_id, values)
        endpoint = get_endpoint(self._redis, claim.endpoint_id)
        if endpoint is None or values[0] is None:
            self._finish(claim, lambda p: _drop_delivery(p, claim.delivery_id, claim.endpoint_id, delivery.customer_id))
            log.info("webhook_delivery_dropped", delivery_id=claim.delivery_id, endpoint_id=claim.endpoint_id)
            return True
        event = WebhookEvent(delivery.event_id, delivery.event_type, body)
        tries = delivery.attempts + 1
        http = self._operator_http if endpoint.id == OPERATOR_ENDPOINT_ID else self._http
        outcome = attempt(http, endpoint.url, event, endpoint.secret)
        delay = self._policy.retry_after(tries, outcome)
        if delay is not None:
            self._finish(claim, lambda p: _reschedule(p, delivery, tries, outcome, delay))
            log.warning("webhook_retry", delivery_id=delivery.id, attempt=tries, retry_in_s=delay, error=outcome.error)
            return True
        result = DeliveryResult(outcome.delivered, tries, outcome.status, outcome.error)
        self._finish(claim, lambda p: _settle(p, delivery, endpoint, event, result))
        if result.delivered:
            log.info("webhook_delivered", delivery_id=delivery.id, event_id=event.event_id, attempts=tries)
        return True

    def _take(self) -> Claim | None:
        token = uuid.uuid4().hex
        now = time.time()
        args = [now, now + self._lease_s, int(self._lease_s * 1000), token, _queue_key(""), _claim_key("")]
        taken = self._claim(keys=[DUE_KEY], args=args)
        return None if taken is None else Claim(taken[0].decode(), taken[1].decode(), token)

    def _finish(self, claim: Claim, write: Callable[[Pipeline], None]) -> None:
        """Apply `write`, end the claim and make the endpoint due for its next
        delivery, in one transaction, if the claim still holds."""
        claim_key = _claim_key(claim.endpoint_id)

        def transaction(pipe: Pipeline) -> None:
            if pipe.get(claim_key) != claim.token.encode():
                log.warning("webhook_claim_lost", endpoint_id=claim.endpoint_id, delivery_id=claim.delivery_id)
                return
            pipe.multi()
            write(pipe)
            pipe.delete(claim_key)
            self._release(keys=[DUE_KEY, _queue_key(claim.endpoint_id)], args=[claim.endpoint_id], client=pipe)

        self._redis.transaction(transaction, claim_key)


def _outcome_fields(tries: int, status: int | None, error: str | None) -> dict[str, str | int]:
    return {"attempts": tries, "last_status": status or "", "last_error": error or "", "updated_at": _now_ms()}


def _reschedule(pipe: Pipeline, delivery: Delivery, tries: int, outcome: Attempt, delay: float) -> None:
    due = time.time() + delay
    fields = {**_outcome_fields(tries, outcome.status, outcome.error), "next_attempt_at": int(due * 1000)}
    pipe.hset(DELIVERY_PREFIX + delivery.id, mapping=fields)
    pipe.zadd(_queue_key(delivery.endpoint_id), {delivery.id: due})


def _settle(pipe: Pipeline, delivery: Delivery, endpoint: Endpoint, event: WebhookEvent, result: DeliveryResult) -> None:
    """Final state, kept for DELIVERY_RETENTION_S: delivered, or dead with its dead letter."""
    key = DELIVERY_PREFIX + delivery.id
    status = "delivered" if result.delivered else "dead"
    pipe.hset(key, mapping={**_outcome_fields(result.attempts, result.status, result.error), "status": status})
    pipe.hdel(key, "next_attempt_at")
    pipe.expire(key, DELIVERY_RETENTION_S)
    pipe.zrem(_queue_key(delivery.endpoint_id), delivery.id)
    if not result.delivered:
        dead_letter(pipe, endpoint.url, event, result, endpoint.id, delivery.customer_id)
