"""Per-request observability: a request id, one access log line, request metrics.

A plain ASGI middleware (not BaseHTTPMiddleware): it wraps `send` to put
`X-Request-ID` on the response and learn the status, and costs no extra
task per request. The id is bound with structlog's contextvars, so every
log line of the request (endpoint code in the thread pool included)
carries `request_id`; it also goes to `request.state.request_id` for the
500 handler, which answers outside this middleware (api.errors).

Metrics are labelled with the route template (`/v1/pricing/{metric_code}`),
never the raw path, so ids in paths cannot multiply the series; requests
no route matched share `route="unmatched"`.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# Any other method a client invents shares one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def request_id_from(given: str | None) -> str:
    """The caller's id if it is safe to log and echo, else a fresh one."""
    if given and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def route_of(scope: Scope) -> str:
    """The matched route's template; Mounts too (`/dashboard/{path}`)."""
    return getattr(scope.get("route"), "path_format", None) or "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        # Each request runs in its own task with its own context; nothing
        # is unbound at the end, so the 500 handler's log line keeps the id.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500  # unless a response starts: an exception escaped

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = route_of(scope)
            metrics.REQUESTS.labels(method, route, status).inc()
            metrics.REQUEST_SECONDS.labels(method, route, status).observe(elapsed)
            # The path without its query string: nothing a client put in a
            # URL by mistake (a key) reaches the log.
            log.info(
                "request", method=scope["method"], path=scope["path"], route=route, status=status,
                duration_ms=round(elapsed * 1000, 2),
            )  # fmt: skip
