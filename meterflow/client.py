"""A Python client for the MeterFlow HTTP API.

    from meterflow.client import MeterFlowClient

    with MeterFlowClient("http://localhost:3000", "mf_...") as client:
        client.track("acme", "api_request", {"bytes": 512})

`track` only buffers; batches of up to 1000 events go to `POST /v1/events`
when the buffer is full, every `flush_interval_s` from a background thread,
on `flush()` and on `close()`. A batch that gets no answer, a 429 or a 5xx
is sent again, unchanged: every event keeps its transaction id, so the
server counts a copy it already stored as a duplicate. At-least-once
sending plus the server's dedup is an exactly-once count (docs/client.md).

Invoices come back as the domain's `operators.invoices.Invoice`, the very
type the server prices with; the other results are small dataclasses of
the API's answers, money and quantities in Decimal.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import structlog

from operators.invoices import Invoice, invoice_from_dict

log = structlog.get_logger(__name__)

MAX_BATCH = 1000  # events per POST /v1/events, the API's limit
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0


class MeterFlowError(Exception):
    """A request the API refused (a 4xx other than 429), or one that did not
    succeed within the retries (429, 5xx, or no answer: `status` None)."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error  # the API's reason, from its {"error": "..."} body


# -- results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedEvent:
    transaction_id: str
    reason: str


@dataclass(slots=True)
class IngestResult:
    """What the API answered for the batches of one flush, added up."""

    accepted: int = 0  # new events
    duplicates: int = 0  # transaction ids already ingested: stored before, not counted again
    failed: list[FailedEvent] = field(default_factory=list)  # refused, with the API's reason


@dataclass(frozen=True, slots=True)
class Usage:
    customer_id: str
    metric: str
    start: int  # Unix ms, inclusive
    end: int  # Unix ms, inclusive
    value: Decimal
    unit: str
    breakdown: dict[str, Decimal] | None  # by the values of the `group_by` property


@dataclass(frozen=True, slots=True)
class Metric:
    code: str
    name: str
    event_type: str
    aggregation: str  # COUNT, SUM, MAX, ... (text: a newer server may know more)
    property: str | None  # the event property aggregated; None for COUNT
    unit: str


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    customer_id: str
    metric: str
    kind: str  # fraud_pattern, usage_spike, daily_anomaly
    severity: str  # warning, critical
    score: float | None  # similarity for fraud_pattern, Z-score otherwise; None = unbounded
    window_start: int  # Unix ms
    window_end: int  # Unix ms, exclusive
    evidence: dict[str, Any]  # the detector's figures; fractional numbers as Decimal
    created_at: int  # Unix ms
    event_time: int  # Unix ms, the newest event the detector had seen


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """An invoice the billing job stored, as GET /v1/invoices/{id} shows it."""

    invoice: Invoice  # its `status` is the current one: draft, finalized, sent, paid or failed
    pdf_url: str | None  # a presigned link to the PDF, valid for a while (INVOICE_URL_EXPIRY_S)


# -- client ----------------------------------------------------------------------


class MeterFlowClient:
    """Buffers usage events and sends them in batches; queries usage, alerts
    and invoices. Thread-safe: any number of threads may `track` at once."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        batch_size: int = MAX_BATCH,
        flush_interval_s: float | None = 1.0,
        max_retries: int = 5,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._http = httpx.Client(
            base_url=base_url, headers={"X-API-Key": api_key}, timeout=timeout_s, transport=transport
        )
        self._buffer: list[bytes] = []  # events, JSON-encoded when tracked
        self._failed: list[FailedEvent] = []
        self._lock = threading.Lock()  # guards _buffer and _failed
        self._send_lock = threading.Lock()  # one flush at a time, so batches go out in order
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if flush_interval_s is not None:
            self._flusher = threading.Thread(
                target=self._flush_periodically, args=(flush_interval_s,), name="meterflow-flush", daemon=True
            )
            self._flusher.start()

    def __enter__(self) -> MeterFlowClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # -- ingestion -----------------------------------------------------------------

    def track(
        self,
        customer_id: str,
        event_type: str,
        properties: dict[str, str | int | float | bool] | None = None,
        *,
        timestamp: int | None = None,
        transaction_id: str | None = None,
    ) -> str:
        """Buffer one event and return its transaction id (a new one unless
        given: pass your own to make re-tracking the same usage harmless).
        `timestamp` is Unix ms, default now. A full buffer is sent at once;
        if that fails, MeterFlowError is raised and the events stay buffered."""
        if self._closed:
            raise RuntimeError("the client is closed")
        transaction_id = transaction_id or f"evt_{uuid.uuid4().hex}"
        event = {
            "transaction_id": transaction_id,
            "customer_id": customer_id,
            "event_type": event_type,
            "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
            "properties": properties or {},
        }
        encoded = orjson.dumps(event)  # a value JSON cannot hold fails here, in the caller's hands
        with self._lock:
            self._buffer.append(encoded)
            full = len(self._buffer) >= self._batch_size
        if full:
            self.flush()
        return transaction_id

    def flush(self) -> IngestResult:
        """Send what is buffered, in batches of at most `batch_size`.

        Raises MeterFlowError when a batch cannot be delivered; that batch and
        the ones after it stay buffered for the next flush, nothing is dropped.
        Refused events are in the result and in `failed_events`."""
        result = IngestResult()
        with self._send_lock:
            with self._lock:
                # What was tracked before this flush; later events wait for the
                # next one, so a flush ends even while other threads keep tracking.
                waiting = len(self._buffer)
            while waiting > 0:
                with self._lock:
                    batch = self._buffer[: min(self._batch_size, waiting)]
                    del self._buffer[: len(batch)]
                waiting -= len(batch)
                try:
                    answer = self._request(
                        "POST",
                        "/v1/events",
                        content=b'{"events":[' + b",".join(batch) + b"]}",
                        headers={"Content-Type": "application/json"},
                    )
                except BaseException:
                    with self._lock:
                        self._buffer[:0] = batch
                    raise
                failed = [FailedEvent(f["transaction_id"], f["reason"]) for f in answer["failed"]]
                if failed:
                    log.warning("meterflow_events_refused", count=len(failed), first=failed[0].reason)
                    with self._lock:
                        self._failed.extend(failed)
                result.accepted += answer["accepted"]
                result.duplicates += answer["duplicates"]
                result.failed.extend(failed)
        return result

    @property
    def buffered(self) -> int:
        """Events tracked and not delivered yet."""
        with self._lock:
            return len(self._buffer)

    @property
    def failed_events(self) -> list[FailedEvent]:
        """Every event the API refused since this client was created, also
        those sent by the background flusher, whose results nobody receives."""
        with self._lock:
            return list(self._failed)

    def close(self) -> None:
        """Stop the background flusher and send what is buffered. Raises
        MeterFlowError when that fails: `buffered` then counts the events
        that were not delivered."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.flush()
        finally:
            self._http.close()

    def _flush_periodically(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except MeterFlowError as exc:  # the events stay buffered for the next round
                log.error("meterflow_flush_failed", error=str(exc), buffered=self.buffered)

    # -- queries -------------------------------------------------------------------

    def usage(self, customer_id: str, metric: str, start: int, end: int, group_by: str | None = None) -> Usage:
        """`metric` over [start, end] (Unix ms, inclusive); `group_by` (an event
        property) adds a breakdown by its values."""
        params = {"customer_id": customer_id, "metric": metric, "start": start, "end": end}
        if group_by is not None:
            params["group_by"] = group_by
        data = self._request("GET", "/v1/usage", params=params)
        breakdown = data.get("breakdown")
        return Usage(
            customer_id=data["customer_id"],
            metric=data["metric"],
            start=data["period"]["start"],
            end=data["period"]["end"],
            value=Decimal(data["value"]),
            unit=data["unit"],
            breakdown=None if breakdown is None else {k: Decimal(v) for k, v in breakdown.items()},
        )

    def metrics(self) -> list[Metric]:
        """The metrics catalog: what each metric counts and in which unit."""
        return [
            Metric(m["code"], m["name"], m["event_type"], m["aggregation"], m["property"], m["unit"])
            for m in self._request("GET", "/v1/metrics")["metrics"]
        ]

    def alerts(
        self, customer_id: str, *, since: int = 0, kind: str | None = None, limit: int = 100
    ) -> list[Alert]:
        """The alerts of the streaming detectors, newest first: those created
        at or after `since` (Unix ms), of one `kind` if given, at most `limit` (1-1000)."""
        params: dict[str, Any] = {"customer_id": customer_id, "since": since, "limit": limit}
        if kind is not None:
            params["kind"] = kind
        data = self._request("GET", "/v1/alerts", params=params)
        return [
            Alert(
                alert_id=a["alert_id"],
                customer_id=a["customer_id"],
                metric=a["metric"],
                kind=a["kind"],
                severity=a["severity"],
                score=None if a["score"] is None else float(a["score"]),
                window_start=a["window"]["start"],
                window_end=a["window"]["end"],
                evidence=a["evidence"],
                created_at=a["created_at"],
                event_time=a["event_time"],
            )
            for a in data["alerts"]
        ]

    def calculate_invoice(self, customer_id: str, start: int, end: int) -> Invoice:
        """A draft invoice for the usage of [start, end] (Unix ms, inclusive);
        nothing is billed."""
        body = {"customer_id": customer_id, "start": start, "end": end}
        return _invoice(self._request("POST", "/v1/invoices/calculate", json=body))

    def invoice(self, invoice_id: str) -> StoredInvoice:
        """An invoice the billing job stored, with its current status and a link to its PDF."""
        data = self._request("GET", f"/v1/invoices/{quote(invoice_id, safe='')}")
        return StoredInvoice(_invoice(data), data["pdf_url"])

    # -- transport -----------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of the first 2xx answer, JSON fractions as Decimal.

        Every request of this client is safe to repeat (reads, calculations,
        event batches deduplicated by transaction id), so no answer, a 429 or
        a 5xx is retried with backoff; any other refusal is raised at once."""
        for attempt in range(self._max_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failure, wait_s = MeterFlowError(f"{method} {path}: {type(exc).__name__}: {exc}"), None
            else:
                if response.is_success:
                    return response.json(parse_float=Decimal)
                failure = _refusal(method, path, response)
                if response.status_code != 429 and response.status_code < 500:
                    raise failure
                wait_s = _server_wait_s(response)
            if attempt == self._max_retries:
                break
            if wait_s is None:  # full jitter: retrying clients do not come back in step
                wait_s = random.uniform(0, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**attempt))
            log.warning("meterflow_retry", method=method, path=path, attempt=attempt + 1, wait_s=round(wait_s, 3),
                        reason=str(failure))  # fmt: skip
            time.sleep(wait_s)
        raise failure


def _refusal(method: str, path: str, response: httpx.Response) -> MeterFlowError:
    try:
        error = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):  # not the API's error shape (a proxy's page, say)
        error = response.text[:500]
    return MeterFlowError(f"{method} {path}: {response.status_code} {error}", response.status_code, error)


def _server_wait_s(response: httpx.Response) -> float | None:
    """How long the server asked us to wait, in seconds, if it said so.
    X-RateLimit-Reset (the window length) only counts on a 429."""
    names = ("Retry-After", "X-RateLimit-Reset") if response.status_code == 429 else ("Retry-After",)
    for name in names:
        try:
            return max(0.0, float(response.headers[name]))
        except (KeyError, ValueError):
            continue
    return None


def _invoice(data: dict[str, Any]) -> Invoice:
    """The API's invoice JSON as the domain's Invoice, so a client's invoice
    is the server's (and operators.invoice_pdf renders it)."""
    return invoice_from_dict(
        {
            **data,
            "period_start": data["period"]["start"],
            "period_end": data["period"]["end"],
            "lines": [
                {**line, "tiers": line.get("tier_breakdown", []), "adjusts": line.get("adjusts")}
                for line in data["lines"]
            ],
        }
    )
