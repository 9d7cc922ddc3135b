"""The request body size limit: 413 before any of an oversized body is parsed.

A pure ASGI middleware rather than a check in a route, so no route can
forget it and nothing reads, buffers or decodes the body first: a declared
`Content-Length` over the limit is refused before the app runs, and a body
without one (chunked) is counted as it arrives and refused once it passes
the limit.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reason = f"request body larger than {max_bytes} bytes; send fewer events per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"error": self.reason}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the route's body read; FastAPI passes an
                # HTTPException on to the app's handler, which answers {"error"}.
                raise HTTPException(413, self.reason)
            return message

        await self.app(scope, counted, send)
