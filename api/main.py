"""The MeterFlow sidecar API.

Run with::

    uvicorn --factory api.main:create_app --host 127.0.0.1 --port 3000

or `python -m api.serve`, which takes host, port and workers from the
settings and makes /metrics add up several workers (api.serve).

Closed by default: without ADMIN_TOKEN the app refuses to be built for
anything but a loopback API_HOST (check_admin_exposure), and admin
requests are then admitted from loopback only (api.deps.require_admin).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse

from api.dashboard import mount_dashboard
from api.deps import Clients
from api.errors import install_error_handlers
from api.exposure import check_admin_exposure
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

# Swagger UI from the API's own origin (scripts/vendor_swagger_ui.sh), so
# /docs works offline; the validator badge would call validator.swagger.io.
SWAGGER_JS = "/dashboard/vendor/swagger-ui-bundle.js"
SWAGGER_CSS = "/dashboard/vendor/swagger-ui.css"
SWAGGER_FAVICON = "/dashboard/favicon.svg"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    check_admin_exposure(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.admin_token:
            log.warning("admin_routes_open", reason="ADMIN_TOKEN is not set: admin routes answer loopback only")
        try:
            ensure_topics(kafka_admin(settings), settings)
        except Exception as exc:  # noqa: BLE001 - the API serves without the broker, with 503s
            log.warning("topics_not_ensured", error=str(exc))
        app.state.clients = Clients.connect(settings)
        log.info("api_started", port=settings.api_port)
        yield
        app.state.clients.close()

    app = FastAPI(title="MeterFlow", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI with local assets only."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="MeterFlow API",
            swagger_js_url=SWAGGER_JS,
            swagger_css_url=SWAGGER_CSS,
            swagger_favicon_url=SWAGGER_FAVICON,
            swagger_ui_parameters={"validatorUrl": None},
        )

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
