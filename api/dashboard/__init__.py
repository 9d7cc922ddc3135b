"""The dashboard page at /dashboard/: static HTML, CSS and JS served by the API.

The page reads the same authenticated routes as any client
(`/v1/dashboard/data`, `/v1/alerts`, `/v1/metrics`), so it needs no routes of
its own. It lives on the API's origin so that those calls need no CORS, and
Chart.js is a vendored copy (scripts/vendor_chartjs.sh) rather than a CDN
link: the Content-Security-Policy below admits nothing but this origin, which
also keeps the API key the page holds in localStorage away from foreign
scripts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Revalidate every time (a cheap 304 with the ETag), so a new release's
    # page and script are never mixed with cached old ones.
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """StaticFiles with the headers above on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at /dashboard/ (and /dashboard, redirected there)."""
    app.mount("/dashboard", DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
