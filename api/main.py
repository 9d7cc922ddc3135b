"""The MeterFlow sidecar API.

Run with::

    uvicorn --factory api.main:create_app --host 127.0.0.1 --port 3000

or `python -m api.serve`, which takes host, port and workers from the
settings and makes /metrics add up several workers (api.serve).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import structlog
from fastapi import FastAPI, Request

from api.dashboard import mount_dashboard
from api.deps import Clients
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.metrics import router as metrics_router
from api.middleware import ObservabilityMiddleware
from api.routers import admin, alerts, billing, catalog, events, health, invoices, usage
from api.routers import dashboard, fraud, stripe_webhooks
from api.routers import webhooks
from meterflow.clients import kafka_admin
from meterflow.log import configure_logging
from meterflow.settings import Settings
from meterflow.storage import ensure_topics

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.admin_token:
            log.warning("admin_routes_open", reason="ADMIN_TOKEN is not set (local development only)")
        try:
            ensure_topics(kafka_admin(settings), settings)
        except Exception as exc:  # noqa: BLE001 - the API serves without the broker, with 503s
            log.warning("topics_not_ensured", error=str(exc))
        app.state.clients = Clients.connect(settings)
        log.info("api_started", port=settings.api_port)
        yield
        app.state.clients.close()

    app = FastAPI(title="MeterFlow", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    # Added first: innermost, so an oversized chunked body's 413 reaches the error handlers.
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)

    @app.middleware("http")
    async def rate_limit_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(getattr(request.state, "rate_limit_headers", {}))
        return response

    app.add_middleware(ObservabilityMiddleware)  # added last: outermost, times everything

    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(events.router)
    app.include_router(admin.router)
    app.include_router(catalog.router)
    app.include_router(usage.router)
    app.include_router(invoices.router)
    app.include_router(billing.router)
    app.include_router(stripe_webhooks.router)
    app.include_router(alerts.router)
    app.include_router(fraud.router)
    app.include_router(dashboard.router)
    app.include_router(webhooks.router)
    mount_dashboard(app)
    return app
