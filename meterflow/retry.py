"""Retry-until-done for the dataflow's side effects.

A sink or the dedup step that cannot reach its service must neither drop
the batch nor crash the worker: it blocks and retries with capped
exponential backoff. Blocking is the backpressure: the Kafka source stops
reading while a sink waits, and the unread messages stay in Kafka.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


def retry_forever(
    action: Callable[[], T],
    what: str,
    max_backoff_s: float = 10.0,
    first_backoff_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    backoff = first_backoff_s
    attempt = 1
    while True:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - any failure of the service is retried
            log.warning(
                "retrying",
                what=what,
                attempt=attempt,
                backoff_s=round(backoff, 3),
                error=f"{type(exc).__name__}: {exc}",
            )
            sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            attempt += 1
