"""Prometheus metrics of the API, served at GET /metrics.

With one worker process the metrics live in the process's default
registry. With several (API_WORKERS > 1) each uvicorn worker is a process
of its own, so `python -m api.serve` points PROMETHEUS_MULTIPROC_DIR at a
fresh directory before the workers start: prometheus_client then keeps
every worker's values in files there, and a scrape answered by any worker
adds up all of them (its multiprocess mode, chosen when prometheus_client
is imported). The metric objects are module-level because that registry is
process-global by design.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# Seconds; ingest waits for the broker (KAFKA_PRODUCE_TIMEOUT_S, 5 s by default).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The field an invalid event's reason starts with (operators.events words
# every reason that way); anything else is "other", so the label stays small.
FAILURE_CLASSES = ("transaction_id", "customer_id", "event_type", "timestamp", "properties", "event")

REQUESTS = Counter(
    "meterflow_api_requests", "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "meterflow_api_request_duration_seconds", "Time to answer an HTTP request",
    ["method", "route", "status"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
EVENTS_ACCEPTED = Counter(
    "meterflow_api_events_accepted", "Events of POST /v1/events acknowledged by the broker and counted"
)
EVENTS_DUPLICATE = Counter(
    "meterflow_api_events_duplicate", "Events of POST /v1/events answered as duplicates"
)
EVENTS_FAILED = Counter(
    "meterflow_api_events_failed", "Events of POST /v1/events refused as invalid, by the field at fault",
    ["reason"],
)  # fmt: skip
BROKER_FAILURES = Counter(
    "meterflow_api_broker_failures", "POST /v1/events answered 503 because the broker did not acknowledge"
)
RATE_LIMITED = Counter("meterflow_api_rate_limited", "Requests refused with 429 by the per-customer rate limit")


def failure_class(reason: str) -> str:
    """`timestamp is older than 30 days` -> `timestamp`; `property 'x' ...` -> `properties`."""
    word = reason.split(" ", 1)[0].split(":", 1)[0]
    word = "properties" if word == "property" else word
    return word if word in FAILURE_CLASSES else "other"


def count_ingest(accepted: int, duplicates: int, failure_reasons: list[str]) -> None:
    EVENTS_ACCEPTED.inc(accepted)
    EVENTS_DUPLICATE.inc(duplicates)
    for reason in failure_reasons:
        EVENTS_FAILED.labels(reason=failure_class(reason)).inc()


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format; public like /health (no key, no rate limit)."""
    registry = REGISTRY
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
