"""Sending simulated traffic: through the HTTP API as a client would, or
straight to Kafka as a bulk loader would.

The API path is the realistic one (keys, validation, rate limits, dedup at
the door). The Kafka path skips the API to load a month in minutes: it
produces exactly what the API would (the event JSON, keyed by customer, an
ingest id header per copy, acknowledged by the broker), so the dataflow
cannot tell the difference. Both send each customer's events in time
order, which the streaming detectors rely on (an event of a day already
closed is late and ignored).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import orjson
import structlog
from tqdm import tqdm

from meterflow.kafka import ConfirmedPublisher, OutgoingMessage
from meterflow.settings import Settings
from meterflow.simulate import Traffic
from operators.dedup import INGEST_ID_HEADER

log = structlog.get_logger(__name__)

MAX_BATCH = 1000  # the API's limit per request
Via = Literal["api", "kafka"]


class SendError(RuntimeError):
    """The traffic could not be delivered (after retries)."""


@dataclass
class SendReport:
    events: int = 0
    accepted: int = 0  # new events (API: as answered; Kafka: acknowledged by the broker)
    duplicates: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first few (transaction_id, reason)
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    # (events sent so far, wall-clock Unix ms when they were confirmed), one per batch:
    # when each event entered the system, for delays measured in wall time.
    confirmed_at: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.events} events in {self.seconds:.1f} s ({rate:.0f}/s): accepted {self.accepted}, "
            f"duplicates {self.duplicates}, failed {self.failed}, "
            f"requests {self.requests}, retries {self.retries}"
        )


def send(
    traffic: Traffic,
    via: Via,
    settings: Settings,
    api_url: str | None = None,
    batch_size: int = MAX_BATCH,
    description: str = "events",
) -> SendReport:
    """Send `traffic` through the API (default URL from settings) or to Kafka."""
    started = time.monotonic()
    with tqdm(total=len(traffic), unit="ev", unit_scale=True, desc=f"{description} via {via}") as bar:
        if via == "kafka":
            report = send_to_kafka(traffic, settings, batch_size, bar.update)
        else:
            url = api_url or f"http://{settings.api_host}:{settings.api_port}"
            client = ApiClient(url, settings.admin_token)
            report = send_to_api(traffic, client, min(batch_size, MAX_BATCH), bar.update)
    report.seconds = time.monotonic() - started
    return report


# -- HTTP API --------------------------------------------------------------------


class ApiClient:
    """The few calls the simulator makes, with the retries a good client makes:
    429 waits for Retry-After, 503 and unreachable retry with backoff."""

    def __init__(self, base_url: str, admin_token: str = "", timeout_s: float = 30.0, attempts: int = 8):
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.retries = 0

    def create_key(self, customer_id: str, name: str = "simulator") -> str:
        headers = {"X-Admin-Token": self.admin_token} if self.admin_token else {}
        body = self._post("/v1/admin/keys", {"customer_id": customer_id, "name": name}, headers)
        return body["api_key"]

    def post_events(self, api_key: str, events: list[dict]) -> dict[str, Any]:
        return self._post("/v1/events", {"events": events}, {"X-API-Key": api_key})

    def _post(self, path: str, payload: dict, headers: dict[str, str]) -> dict[str, Any]:
        data = orjson.dumps(payload)
        failures = 0
        while True:
            request = urllib.request.Request(
                self.base_url + path,
                data=data,
                method="POST",
                headers={"content-type": "application/json", **headers},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                reason = _error_reason(exc)
                if exc.code == 429:
                    # Rate limited: not a failure, the limit says when to come back.
                    wait_s = _retry_after(exc, default=1.0)
                    log.info("rate_limited", path=path, wait_s=wait_s)
                    self.retries += 1
                    time.sleep(wait_s)
                    continue
                if exc.code != 503:
                    raise SendError(f"POST {path}: {exc.code} {reason}") from None
                wait_s = _retry_after(exc, default=1.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = str(getattr(exc, "reason", exc))
                wait_s = min(2.0**failures, 10.0)
            failures += 1
            if failures >= self.attempts:
                raise SendError(f"POST {path}: gave up after {failures} attempts: {reason}")
            log.warning("send_retry", path=path, attempt=failures, wait_s=wait_s, reason=reason)
            self.retries += 1
            time.sleep(wait_s)


def _retry_after(exc: urllib.error.HTTPError, default: float) -> float:
    try:
        return max(0.0, float(exc.headers.get("Retry-After", default)))
    except ValueError:
        return default


def _error_reason(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError):
        return str(exc.reason)


def send_to_api(
    traffic: Traffic, client: ApiClient, batch_size: int, progress: Callable[[int], Any]
) -> SendReport:
    """Each customer with a new key of its own, its events in time order, in batches."""
    report = SendReport()
    for customer_id, indices in traffic.by_customer():
        api_key = client.create_key(customer_id)
        for start in range(0, len(indices), batch_size):
            batch = list(traffic.events(indices[start : start + batch_size]))
            body = client.post_events(api_key, batch)
            report.requests += 1
            report.events += len(batch)
            report.accepted += body["accepted"]
            report.duplicates += body["duplicates"]
            report.failed += len(body["failed"])
            if body["failed"] and len(report.failures) < 10:
                report.failures += [(f["transaction_id"], f["reason"]) for f in body["failed"][:10]]
                log.warning("events_refused", customer_id=customer_id, first=body["failed"][0])
            report.confirmed_at.append((report.events, int(time.time() * 1000)))
            progress(len(batch))
    report.retries = client.retries
    return report


# -- Kafka -----------------------------------------------------------------------


def send_to_kafka(
    traffic: Traffic,
    settings: Settings,
    batch_size: int,
    progress: Callable[[int], Any],
    attempts: int = 5,
) -> SendReport:
    """All events in time order to `events.raw`, each acknowledged.

    Keyed by customer, so one customer's events share a partition and keep
    their order. A batch the broker does not fully acknowledge is resent
    (only its unacknowledged messages) with a fresh producer; the ingest id
    stays the same across resends, so the dataflow's dedup counts a resent
    copy once.
    """
    report = SendReport()
    publisher = ConfirmedPublisher(settings)
    try:
        for start in range(0, len(traffic), batch_size):
            events = list(traffic.events(range(start, min(start + batch_size, len(traffic)))))
            pending = [
                OutgoingMessage(
                    topic=settings.topic_events,
                    value=orjson.dumps(event),
                    key=event["customer_id"].encode(),
                    headers=[(INGEST_ID_HEADER, uuid.uuid4().hex.encode())],
                )
                for event in events
            ]
            for attempt in range(1, attempts + 1):
                try:
                    publisher.send(pending)
                    break
                except RuntimeError as exc:
                    if attempt == attempts:
                        raise SendError(f"Kafka: {len(pending)} events not acknowledged: {exc}") from None
                    log.warning("produce_retry", attempt=attempt, pending=len(pending), error=str(exc))
                    report.retries += 1
                    time.sleep(min(2.0**attempt, 10.0))
            report.requests += 1
            report.events += len(events)
            report.accepted += len(events)
            report.confirmed_at.append((report.events, int(time.time() * 1000)))
            progress(len(events))
    finally:
        publisher.close()
    return report
