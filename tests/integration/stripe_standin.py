"""A local HTTP server standing in for Stripe's API (`STRIPE_API_BASE`).

It records every request the real Stripe SDK sends (method, path, form
body, Idempotency-Key, Authorization) and answers with Stripe-shaped JSON
for the few endpoints billing uses. It is as strict as Stripe about
idempotency keys (https://docs.stripe.com/api/idempotent_requests):

- the answer to a request with a key is saved when the request executed,
  success or 5xx alike, and replayed for a repeat of that key (header
  `Idempotent-Replayed: true`; a replayed or saved 5xx carries
  `Stripe-Should-Retry: false`, so the SDK does not retry it in vain),
  until told to forget (Stripe forgets after 24 hours);
- a 4xx (the request failed validation) is not saved;
- a key reused with other parameters, method or path answers 400
  `idempotency_error` and executes nothing;
- a key whose first request is still in flight answers 409
  `idempotency_error` (the SDK retries that).

Scripted failures make it answer 4xx/5xx, optionally after carrying the
request out (`commit`: the answer is lost on the way back, as a network or
proxy failure loses it; Stripe saved the real answer). `stall` holds a
request in flight until released. Search (`/v1/invoices/search`,
`/v1/customers/search`) takes `metadata['k']:'v'` clauses joined by AND. Payments (`pay`, `fail_payment`) change an
invoice's status and, as Stripe does, POST a signed event (`invoice.paid`,
`invoice.payment_failed`) to `webhook_url`.
"""

from __future__ import annotations

import hashlib
import hmac
import dataclasses
import itertools
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

from meterflow.local import API_ARGV, http_ok
from meterflow.settings import Settings
from meterflow.stack import HOST, Stack, free_port

Reply = tuple[int, dict[str, Any]]
_SEARCH_CLAUSE = re.compile(r"metadata\['([^']+)'\]:'((?:[^'\\]|\\.)*)'")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]  # as encoded by the SDK: "metadata[meterflow_metric_code]" -> "api_calls"
    idempotency_key: str | None
    authorization: str | None
    status: int  # what the stand-in answered


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    remaining: int
    status: int
    error_type: str
    message: str
    commit: bool  # carry the request out, then answer the error anyway


@dataclass
class _Stall:
    method: str
    path: re.Pattern[str]
    release: threading.Event


def _error(status: int, error_type: str, message: str) -> Reply:
    return status, {"error": {"type": error_type, "message": message}}


def _metadata(form: dict[str, str]) -> dict[str, str]:
    return {m[1]: v for k, v in form.items() if (m := re.fullmatch(r"metadata\[(.+)\]", k))}


class StripeStandIn:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self._replies: dict[str, tuple[tuple[Any, ...], Reply]] = {}  # key -> (request fingerprint, answer)
        self._in_flight: set[str] = set()
        self._failures: list[_Failure] = []
        self._stalls: list[_Stall] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, free_port()), _handler(self))
        self.webhook_url = ""  # where payment events go (MeterFlow's /v1/stripe/webhook)
        self.webhook_secret = "whsec_standin"

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "StripeStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(
        self,
        method: str,
        path: str,
        times: int = 1,
        status: int = 500,
        error_type: str = "api_error",
        message: str = "stand-in failure",
        commit: bool = False,
    ) -> None:
        """Answer the next `times` requests matching `method` and the `path` regex with an error."""
        with self._lock:
            self._failures.append(_Failure(method, re.compile(path), times, status, error_type, message, commit))

    def stall(self, method: str, path: str) -> threading.Event:
        """Hold the next request matching `method` and the `path` regex in
        flight (before it executes) until the returned event is set."""
        stall = _Stall(method, re.compile(path), threading.Event())
        with self._lock:
            self._stalls.append(stall)
        return stall.release

    def forget_idempotency_keys(self) -> None:
        """What Stripe does 24 hours after a key was first used."""
        with self._lock:
            self._replies.clear()

    def pay(self, invoice_id: str) -> int:
        """The customer pays: the invoice is paid and `invoice.paid` is sent to the webhook URL."""
        return self._settle(invoice_id, "paid", "invoice.paid")

    def fail_payment(self, invoice_id: str) -> int:
        """A payment attempt fails: the invoice stays open and `invoice.payment_failed` is sent."""
        return self._settle(invoice_id, "open", "invoice.payment_failed")

    def _settle(self, invoice_id: str, status: str, event_type: str) -> int:
        with self._lock:
            invoice = self.objects[invoice_id]
            invoice["status"] = status
            event = {
                "id": f"evt_standin{next(self._ids)}",
                "object": "event",
                "type": event_type,
                "created": int(time.time()),
                "livemode": False,
                "data": {"object": dict(invoice)},
            }
        return self.send_event(event)

    def send_event(self, event: dict[str, Any], secret: str | None = None) -> int:
        """POST `event` to `webhook_url` signed as Stripe signs (`Stripe-Signature: t=..,v1=..`
        with `webhook_secret`, or `secret` to forge one); returns the answer's status."""
        payload = json.dumps(event).encode()
        timestamp = int(time.time())
        key = (secret or self.webhook_secret).encode()
        digest = hmac.new(key, f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            self.webhook_url,
            data=payload,
            headers={"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={digest}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def items_of(self, invoice_id: str) -> list[dict[str, Any]]:
        return [o for o in self.objects.values() if o["object"] == "invoiceitem" and o["invoice"] == invoice_id]

    def handle(
        self, method: str, url: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The answer (status, body, extra headers) to one request, recorded in `requests`."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        key = headers.get("idempotency-key")
        fingerprint = (method, parts.path, tuple(sorted(query.items())), tuple(sorted(form.items())))
        with self._lock:
            if key is not None and key in self._in_flight:
                return self._record(method, parts, form, headers, _error(
                    409, "idempotency_error", f"There is currently another in-progress request using the key '{key}'."
                ))  # fmt: skip
            if key is not None:
                self._in_flight.add(key)
            stall = next((s for s in self._stalls if s.method == method and s.path.fullmatch(parts.path)), None)
            if stall is not None:
                self._stalls.remove(stall)
        try:
            if stall is not None:
                stall.release.wait(30)
            with self._lock:
                return self._answer(method, parts, query, form, headers, key, fingerprint)
        finally:
            with self._lock:
                self._in_flight.discard(key)  # type: ignore[arg-type]

    def _answer(
        self, method: str, parts: Any, query: dict[str, str], form: dict[str, str], headers: dict[str, str],
        key: str | None, fingerprint: tuple[Any, ...],
    ) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        extra: dict[str, str] = {}
        saved = self._replies.get(key) if key is not None else None
        if saved is not None and saved[0] != fingerprint:
            return self._record(method, parts, form, headers, _error(
                400, "idempotency_error",
                f"Keys for idempotent requests can only be used with the same parameters they were first used with. "
                f"Try using a key other than '{key}' if you meant to execute a different request.",
            ))  # fmt: skip
        failure = next(
            (f for f in self._failures if f.remaining > 0 and f.method == method and f.path.fullmatch(parts.path)),
            None,
        )
        if failure is not None:
            failure.remaining -= 1
        if saved is not None:
            reply = saved[1]
            extra["Idempotent-Replayed"] = "true"
        elif failure is not None and not failure.commit:
            reply = _error(failure.status, failure.error_type, failure.message)
        else:
            reply = self._route(method, parts.path, query, form)
        if key is not None and saved is None and (reply[0] < 400 or reply[0] >= 500):
            self._replies[key] = (fingerprint, reply)  # executed: saved, 5xx included; a 4xx is not
        if reply[0] >= 500:
            extra["Stripe-Should-Retry"] = "false"  # Stripe replays it for this key anyway
        if failure is not None and failure.commit:  # carried out, but the answer is lost on the way
            reply, extra = _error(failure.status, failure.error_type, failure.message), {}
        return self._record(method, parts, form, headers, reply, extra)

    def _record(
        self, method: str, parts: Any, form: dict[str, str], headers: dict[str, str], reply: Reply,
        extra: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:  # fmt: skip
        self.requests.append(
            Recorded(
                method, parts.path, dict(parse_qsl(parts.query)), form, headers.get("idempotency-key"),
                headers.get("authorization"), reply[0],
            )
        )  # fmt: skip
        return reply[0], reply[1], extra or {}

    def _search(self, kind: str, path: str, query: dict[str, str]) -> Reply:
        text = query.get("query", "")
        clauses = [c.strip() for c in re.split(r"\s+AND\s+", text)]
        parsed = [_SEARCH_CLAUSE.fullmatch(c) for c in clauses]
        if not text or not all(parsed):
            return _error(400, "invalid_request_error", f"the stand-in cannot parse the search query {text!r}")
        wanted = {m[1]: re.sub(r"\\(.)", r"\1", m[2]) for m in parsed if m}
        found = [
            o for o in self.objects.values()
            if o["object"] == kind and all(o.get("metadata", {}).get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        return 200, {"object": "search_result", "url": path, "has_more": False, "next_page": None, "data": found}

    def _create(self, prefix: str, fields: dict[str, Any]) -> Reply:
        obj = {"id": f"{prefix}_standin{next(self._ids)}", "livemode": False, "created": 1767225600, **fields}
        self.objects[obj["id"]] = obj
        return 200, obj

    def _route(self, method: str, path: str, query: dict[str, str], form: dict[str, str]) -> Reply:
        meta = _metadata(form)
        if (method, path) == ("POST", "/v1/customers"):
            return self._create("cus", {"object": "customer", "description": form.get("description"), "metadata": meta})
        if (method, path) == ("POST", "/v1/invoices"):
            fields = {k: form.get(k) for k in ("customer", "currency", "collection_method", "description")}
            return self._create("in", {"object": "invoice", "status": "draft", "metadata": meta, **fields})
        if (method, path) == ("POST", "/v1/invoiceitems"):
            invoice = self.objects.get(form.get("invoice", ""))
            if invoice is None or invoice["status"] != "draft":
                return _error(400, "invalid_request_error", "invoice items can only be added to a draft invoice")
            fields = {k: form.get(k) for k in ("customer", "invoice", "currency", "description")}
            amount = int(form["amount"])
            return self._create("ii", {"object": "invoiceitem", "amount": amount, "metadata": meta, **fields})
        if (method, path) == ("GET", "/v1/invoices/search"):
            return self._search("invoice", path, query)
        if (method, path) == ("GET", "/v1/customers/search"):
            return self._search("customer", path, query)
        if (method, path) == ("GET", "/v1/invoices"):
            found = [
                o for o in self.objects.values()
                if o["object"] == "invoice" and query.get("customer") in (None, o["customer"])
            ]  # fmt: skip
            return 200, {"object": "list", "url": "/v1/invoices", "has_more": False, "data": found}
        if (method, path) == ("GET", "/v1/invoiceitems"):
            items = self.items_of(query.get("invoice", ""))
            return 200, {"object": "list", "url": "/v1/invoiceitems", "has_more": False, "data": items}
        match = re.fullmatch(r"/v1/invoices/([^/]+)(?:/(finalize|send))?", path)
        invoice = self.objects.get(match[1]) if match else None
        if invoice is None:
            return _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")
        action = (method, match[2])  # type: ignore[index]
        if action == ("GET", None):
            return 200, invoice
        if action == ("POST", "finalize") and invoice["status"] == "draft":
            invoice["status"] = "open"
            invoice["amount_due"] = sum(item["amount"] for item in self.items_of(invoice["id"]))
            return 200, invoice
        if action == ("POST", "send") and invoice["status"] == "open":
            invoice["sent"] = True  # not a Stripe field: lets tests see the invoice went out
            return 200, invoice
        return _error(400, "invalid_request_error", f"invoice {invoice['id']} is {invoice['status']}")


def _handler(standin: StripeStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = standin.handle(self.command, self.path, form, headers)
            raw = json.dumps(body).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Request-Id", f"req_standin{len(standin.requests)}")
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _serve

        def log_message(self, *_: object) -> None:  # the tests assert on `requests` instead
            pass

    return Handler


STRIPE_KEY = "sk_test_standin"


@contextmanager
def live_api(stack: Stack, settings: Settings, stand_in: StripeStandIn, **overrides: Any) -> Iterator[Settings]:
    """A second real API process on the session's services, billing live
    through `stand_in` and taking its payment events; yields its settings
    (which a billing job run in the test process uses too)."""
    live = dataclasses.replace(
        settings,
        api_port=free_port(),
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=stand_in.base_url,
        stripe_max_network_retries=2,
        stripe_webhook_secret=stand_in.webhook_secret,
        **overrides,
    )
    url = f"http://{live.api_host}:{live.api_port}"
    stand_in.webhook_url = f"{url}/v1/stripe/webhook"
    name = f"api-billing-{live.api_port}"
    stack.add_process(name, API_ARGV, env={**os.environ, **live.as_env()}, health=http_ok(f"{url}/health"), port=live.api_port)
    stack.start_service(name)
    try:
        yield live
    finally:
        stack.stop_service(name)
