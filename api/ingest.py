"""POST /v1/events, step by step: validate, find duplicates, produce, claim.

Order matters for "no loss, no double count":

1. validate every event (reasons per event, the batch never fails for one);
2. drop duplicates: inside the batch, and transaction_ids Redis already
   holds a dedup claim for;
3. produce the rest to Kafka, each with a fresh ingest id header, and wait
   for the broker's acknowledgement; if the broker does not acknowledge,
   answer 503 and claim nothing, so the client's retry is not mistaken for
   a duplicate;
4. claim the delivered events in Redis. A claim that finds another ingest
   id lost a race with a concurrent request for the same transaction_id:
   it is reported as a duplicate, and the dataflow will drop that copy
   too, because the claim decides which copy counts (operators.dedup).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from api import metrics
from api.deps import Clients
from api.errors import ServiceUnavailable
from meterflow.kafka import OutgoingMessage, produce_confirmed
from operators import dedup
from operators.events import InvalidEvent, UsageEvent, transaction_id_of, validate_event

log = structlog.get_logger(__name__)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _validate(raw_events: list[Any], customer_id: str, result: IngestResult) -> list[UsageEvent]:
    now_ms = int(time.time() * 1000)
    in_batch: set[str] = set()
    valid: list[UsageEvent] = []
    for raw in raw_events:
        try:
            event = validate_event(raw, now_ms)
        except InvalidEvent as exc:
            result.failed.append((transaction_id_of(raw), str(exc)))
            continue
        if event.customer_id != customer_id:
            result.failed.append(
                (event.transaction_id, "customer_id does not match the API key's customer")
            )
            continue
        if event.transaction_id in in_batch:
            result.duplicates += 1
            continue
        in_batch.add(event.transaction_id)
        valid.append(event)
    return valid


def ingest_events(clients: Clients, raw_events: list[Any], customer_id: str) -> IngestResult:
    settings = clients.settings
    result = IngestResult()
    candidates = _validate(raw_events, customer_id, result)

    try:
        already = dedup.seen(clients.redis, [(e.customer_id, e.transaction_id) for e in candidates])
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"dedup store unavailable: {exc}") from exc
    fresh = [event for event, was_seen in zip(candidates, already) if not was_seen]
    result.duplicates += len(candidates) - len(fresh)
    if not fresh:
        return result

    # Unique per copy: one random prefix per request (a uuid4 per event was
    # a measurable share of the request's time) plus the event's position.
    prefix = uuid.uuid4().hex
    ingest_ids = [f"{prefix}-{i}" for i in range(len(fresh))]
    # Every event of the request belongs to the key's customer (checked in
    # _validate), so they share one Kafka key.
    key = customer_id.encode()
    topic = settings.topic_events
    producer = clients.producer
    outcomes = produce_confirmed(
        producer,
        [
            OutgoingMessage(topic, event.to_json(), key, [(dedup.INGEST_ID_HEADER, ingest_id.encode())])
            for event, ingest_id in zip(fresh, ingest_ids)
        ],
        timeout_s=settings.kafka_produce_timeout_s + 1,
    )
    errors = [err for err in outcomes if err is not None]
    if errors:
        clients.replace_producer(producer)
    delivered = [
        (event.customer_id, event.transaction_id, ingest_id)
        for event, ingest_id, err in zip(fresh, ingest_ids, outcomes)
        if err is None
    ]

    try:
        claims = dedup.claim_many(clients.redis, delivered, settings.dedup_ttl_s)
    except redis.RedisError as exc:
        # The events are safely in Kafka and the dataflow will claim them;
        # only the duplicate report of this response is less precise.
        log.warning("dedup_claim_deferred", events=len(delivered), error=str(exc))
        claims = [dedup.Claim.NEW] * len(delivered)

    if errors:
        metrics.BROKER_FAILURES.inc()
        log.error(
            "ingest_broker_failure", delivered=len(delivered), failed=len(errors), error=str(errors[0])
        )
        raise ServiceUnavailable(
            f"event broker unavailable: {len(errors)} of {len(fresh)} events not acknowledged "
            f"({errors[0].str()}); retry the request"
        )
    result.accepted = sum(claim.counts for claim in claims)
    result.duplicates += len(claims) - result.accepted
    return result
