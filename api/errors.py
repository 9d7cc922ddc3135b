"""One error shape for every refusal: `{"error": "<reason>"}`."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from operators.billing import StripeAmountLimit

log = structlog.get_logger(__name__)


class ServiceUnavailable(Exception):
    """A dependency (broker, Redis, ClickHouse) cannot do its part right now."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Conflict(Exception):
    """The request collides with work in progress or already done (e.g. a
    billing period overlapping one already billed); answered 409."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamRefused(Exception):
    """A third party (Stripe) refused what was asked of it; answered 502,
    since the client's request itself was valid."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":  # loc is (body, character offset)
            position = error.get("loc", ("", "?"))[-1]
            parts.append(f"malformed JSON at character {position}: {error.get('ctx', {}).get('error')}")
            continue
        if isinstance(error.get("input"), bytes):  # the body was not read as JSON at all
            parts.append("the body must be JSON, sent with Content-Type: application/json")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(parts) or "invalid request"


FASTAPI_PARSE_FAILURE = "There was an error parsing the body"


def _http_reason(exc: StarletteHTTPException) -> str:
    """The refusal's reason; for a body FastAPI could not read as JSON, what
    was wrong with it, which FastAPI's own message does not say."""
    cause = exc.__cause__
    if exc.detail != FASTAPI_PARSE_FAILURE or cause is None:
        return str(exc.detail)
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body's JSON has a number with too many digits"
    return str(exc.detail)


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "minLength": 1, "description": "why, in words"}},
}


def _error_response(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document_errors(app: FastAPI) -> None:
    """Make /openapi.json describe the refusals this API really sends.

    FastAPI documents a 422 body `{"detail": [...]}` that this API never
    answers; clients generated from the document (and schema-driven tests)
    would expect it; and a bad query parameter is a 400 here, not a 422.
    Every operation gets the `{"error"}` shape instead, for 422 (bodies) and
    for the other 4xx and 5xx answers it can give.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = build()
        if fresh:
            for operation in (op for item in schema["paths"].values() for op in item.values()):
                responses = operation.setdefault("responses", {})
                if "422" in responses and "requestBody" in operation:
                    responses["422"] = _error_response("the body is not the expected shape")
                else:
                    responses.pop("422", None)  # a bad query or path parameter is a 400
                responses.setdefault("4XX", _error_response("refused: bad parameter, key, customer, limit"))
                responses.setdefault("5XX", _error_response("a dependency is down (503) or an internal error"))
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["Error"] = ERROR_SCHEMA
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    document_errors(app)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": _http_reason(exc)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A malformed body is 422 (the contract's clients expect it); a bad
        # query parameter is a plain 400.
        in_body = any(error.get("loc", ("",))[0] == "body" for error in exc.errors())
        return JSONResponse({"error": _describe(exc)}, status_code=422 if in_body else 400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        # Starlette answers this one outside every middleware, so the
        # request id (api.middleware) is put on here.
        request_id = getattr(request.state, "request_id", None)
        headers = {"X-Request-ID": request_id} if request_id else None
        return JSONResponse({"error": "internal error"}, status_code=500, headers=headers)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Conflict)
    async def conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=409)

    @app.exception_handler(StripeAmountLimit)
    async def beyond_stripe(_: Request, exc: StripeAmountLimit) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=422)

    @app.exception_handler(UpstreamRefused)
    async def upstream_refused(_: Request, exc: UpstreamRefused) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=502)
