"""Billing runs: the plan of Stripe operations, shown (dry run) or sent (live).

Without `STRIPE_API_KEY` a run only plans (`operators.billing`). With it,
the plan goes through Stripe's official SDK, every call carrying its
idempotency key, so a repeated call within Stripe's 24 hours returns the
object the first one created.

Stripe forgets idempotency keys after 24 hours, so each period's live run
also keeps a progress record in Redis, hash `billing:<run key>`:

    invoice             the invoice as billed (JSON, as /v1/invoices/calculate renders it)
    plan                the operations as planned when the Stripe invoice was created (JSON)
    stripe_customer_id, stripe_invoice_id
    step:<step>         id of the Stripe object that step created or changed
    status              in_progress | sent
    updated_at

The record is written when the Stripe invoice exists (before that nothing is
billed and a re-run simply plans again) and after every later step. A re-run
of a sent period returns the record without calling Stripe; a re-run of an
interrupted one resumes the recorded plan (same amounts, same keys), first
asking Stripe which pending steps it carried out although the answer was
lost. Only the holder of the period's lock (`billing:<run key>:lock`, SET
NX with a timeout) runs or writes; a concurrent run of the same period is
refused with 409.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, TypeVar

import redis
import stripe
import structlog
from fastapi import HTTPException
from redis.exceptions import LockError

from api.deps import Clients
from api.errors import ServiceUnavailable
from api.invoicing import calculate_invoice
from api.routers.invoices import invoice_out
from operators.billing import (
    CREATE_INVOICE,
    CREATE_INVOICE_ITEM,
    CUSTOMER_REF,
    FINALIZE_INVOICE,
    INVOICE_REF,
    SEND_INVOICE,
    STEP_FINALIZE,
    STEP_INVOICE,
    BillingPlan,
    StripeOperation,
    billing_key,
    customer_key,
    parse_customer_map,
    plan_billing,
    resolve,
)
from operators.invoices import Invoice

log = structlog.get_logger(__name__)

CUSTOMERS_HASH = "stripe:customers"  # MeterFlow customer_id -> Stripe customer id
RECORD_PREFIX = "billing:"
# Longer than any run: each Stripe call times out after 80 s and is retried
# STRIPE_MAX_NETWORK_RETRIES times. Should a run outlive it anyway, a second
# run could start; Stripe's idempotency keys still keep it from billing twice.
LOCK_TIMEOUT_S = 600
# Stripe errors worth running again later: nothing is wrong with the request.
TRANSIENT = (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BillingRun:
    invoice: dict[str, Any]  # as /v1/invoices/calculate renders it
    mode: str  # dry_run | live
    plan: BillingPlan  # with the ids known so far filled in
    stripe_customer_id: str | None
    stripe_invoice_id: str | None
    status: str  # dry_run | no_usage | sent
    replayed: bool = False  # the recorded result of an earlier run: nothing was sent now


def run_billing(
    clients: Clients, customer_id: str, start_ms: int, end_ms: int, invoice: Invoice | None = None
) -> BillingRun:
    """Bill the period: a dry run without a Stripe key, else live. The invoice
    billed is `invoice` (the billing job passes its stored, finalized one) or
    else the period's usage as computed now (POST /v1/billing/run); either way
    a period already recorded is replayed or resumed with the invoice it
    recorded."""
    try:
        if clients.settings.stripe_api_key:
            return _live_run(clients, customer_id, start_ms, end_ms, invoice)
        return _dry_run(clients, invoice or calculate_invoice(clients, customer_id, start_ms, end_ms))
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"billing store unavailable: {exc}") from exc


def _render(invoice: Invoice) -> dict[str, Any]:
    return invoice_out(invoice).model_dump(mode="json")


def mapped_customer(clients: Clients, customer_id: str) -> str | None:
    """The Stripe customer of `customer_id`: configured (`STRIPE_CUSTOMER_MAP`)
    first, else the one a live run created (Redis `stripe:customers`)."""
    configured = parse_customer_map(clients.settings.stripe_customer_map).get(customer_id)
    if configured:
        return configured
    stored = clients.redis.hget(CUSTOMERS_HASH, customer_id)
    return stored.decode() if stored else None


def _dry_run(clients: Clients, invoice: Invoice) -> BillingRun:
    customer = mapped_customer(clients, invoice.customer_id)
    plan = plan_billing(invoice, customer or CUSTOMER_REF)
    status = "dry_run" if plan.operations else "no_usage"
    return BillingRun(_render(invoice), "dry_run", plan, customer, None, status)


class _Progress:
    """The Redis progress record of one period (see the module docstring)."""

    def __init__(self, client: redis.Redis, run_key: str) -> None:
        self._redis = client
        self._key = RECORD_PREFIX + run_key
        self.fields = {k.decode(): v.decode() for k, v in client.hgetall(self._key).items()}

    def done(self, step: str) -> bool:
        return f"step:{step}" in self.fields

    def save(self, **fields: str) -> None:
        fields["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._redis.hset(self._key, mapping=fields)
        self.fields.update(fields)

    def save_step(self, step: str, stripe_id: str) -> None:
        self.save(**{f"step:{step}": stripe_id})

    def result(self, replayed: bool) -> BillingRun:
        plan = BillingPlan.from_json(self.fields["plan"])
        customer, invoice_id = self.fields["stripe_customer_id"], self.fields["stripe_invoice_id"]
        return BillingRun(
            invoice=json.loads(self.fields["invoice"]),
            mode="live",
            plan=plan.resolved({CUSTOMER_REF: customer, INVOICE_REF: invoice_id}),
            stripe_customer_id=customer,
            stripe_invoice_id=invoice_id,
            status=self.fields["status"],
            replayed=replayed,
        )


def stripe_client(clients: Clients) -> stripe.StripeClient:
    settings = clients.settings
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=settings.stripe_max_network_retries,
    )


def stripe_call(what: str, call: Callable[[], T]) -> T:
    """`call()` with Stripe's failures turned into API errors: transient ones
    (network, 5xx, rate limit; the SDK has already retried them) into 503, so
    the caller runs again and resumes; refusals (invalid request, card, auth)
    into 502 with Stripe's message."""
    try:
        return call()
    except stripe.StripeError as exc:
        message = exc.user_message or str(exc) or type(exc).__name__
        log.warning("stripe_call_failed", what=what, status=exc.http_status, error=message)
        if isinstance(exc, TRANSIENT):
            raise ServiceUnavailable(
                f"Stripe unavailable during {what}: {message}; progress is kept, run again to resume"
            ) from exc
        raise HTTPException(502, f"Stripe refused {what}: {message}") from exc


def _ensure_customer(clients: Clients, client: stripe.StripeClient, customer_id: str) -> str:
    known = mapped_customer(clients, customer_id)
    if known:
        return known
    created = stripe_call(
        "stripe.customers.create",
        lambda: client.v1.customers.create(
            {"description": f"MeterFlow customer {customer_id}", "metadata": {"meterflow_customer_id": customer_id}},
            {"idempotency_key": customer_key(customer_id)},
        ),
    )
    # Runs of other periods may create the same customer at the same time
    # (same idempotency key, so the same Stripe customer); the first mapping stays.
    clients.redis.hsetnx(CUSTOMERS_HASH, customer_id, created.id)
    log.info("stripe_customer_created", customer_id=customer_id, stripe_customer_id=created.id)
    return clients.redis.hget(CUSTOMERS_HASH, customer_id).decode()


def _send(client: stripe.StripeClient, op: StripeOperation, payload: dict[str, Any]) -> Any:
    options: stripe.RequestOptions = {"idempotency_key": op.idempotency_key}
    if op.action == CREATE_INVOICE:
        return client.v1.invoices.create(payload, options)  # type: ignore[arg-type]
    if op.action == CREATE_INVOICE_ITEM:
        return client.v1.invoice_items.create(payload, options)  # type: ignore[arg-type]
    params = dict(payload)
    invoice_id = params.pop("invoice")
    if op.action == FINALIZE_INVOICE:
        return client.v1.invoices.finalize_invoice(invoice_id, params or None, options)  # type: ignore[arg-type]
    if op.action == SEND_INVOICE:
        return client.v1.invoices.send_invoice(invoice_id, params or None, options)  # type: ignore[arg-type]
    raise ValueError(f"unknown Stripe action {op.action}")


def _reconcile(client: stripe.StripeClient, progress: _Progress, plan: BillingPlan) -> None:
    """Mark the pending steps Stripe carried out although their answer never
    reached the record (a lost response, a crash before the write). Within
    24 hours the idempotency keys alone would cover them; after that Stripe
    has forgotten the keys, so ask it for the invoice's items and status."""
    invoice_id = progress.fields["stripe_invoice_id"]
    pending = {
        op.idempotency_key: op.step
        for op in plan.operations
        if op.action == CREATE_INVOICE_ITEM and not progress.done(op.step)
    }
    if pending:
        items = stripe_call(
            "stripe.invoiceItems.list", lambda: client.v1.invoice_items.list({"invoice": invoice_id, "limit": 100})
        )
        for item in items.auto_paging_iter():
            step = pending.get((item.to_dict().get("metadata") or {}).get("meterflow_idempotency_key"))
            if step:
                progress.save_step(step, item.id)
    if not progress.done(STEP_FINALIZE):
        invoice = stripe_call("stripe.invoices.retrieve", lambda: client.v1.invoices.retrieve(invoice_id))
        if invoice.status != "draft":
            progress.save_step(STEP_FINALIZE, invoice_id)


def _live_run(clients: Clients, customer_id: str, start_ms: int, end_ms: int, invoice: Invoice | None) -> BillingRun:
    run_key = billing_key(customer_id, start_ms, end_ms)
    lock = clients.redis.lock(f"{RECORD_PREFIX}{run_key}:lock", timeout=LOCK_TIMEOUT_S, blocking=False)
    if not lock.acquire():
        raise HTTPException(409, "a billing run for this customer and period is in progress; try again when it ends")
    try:
        return _run_locked(clients, customer_id, start_ms, end_ms, run_key, invoice)
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("billing_lock_expired_during_run", run_key=run_key)


def _run_locked(
    clients: Clients, customer_id: str, start_ms: int, end_ms: int, run_key: str, invoice: Invoice | None
) -> BillingRun:
    progress = _Progress(clients.redis, run_key)
    if progress.fields.get("status") == "sent":
        log.info("billing_run_replayed", run_key=run_key)
        return progress.result(replayed=True)
    client = stripe_client(clients)
    if progress.fields:  # interrupted earlier: resume the recorded plan
        plan = BillingPlan.from_json(progress.fields["plan"])
        customer, invoice_json = progress.fields["stripe_customer_id"], progress.fields["invoice"]
        _reconcile(client, progress, plan)
        log.info("billing_run_resumed", run_key=run_key)
    else:
        invoice = invoice or calculate_invoice(clients, customer_id, start_ms, end_ms)
        if not invoice.lines:
            return BillingRun(_render(invoice), "live", plan_billing(invoice, CUSTOMER_REF), None, None, "no_usage")
        customer = _ensure_customer(clients, client, customer_id)
        plan = plan_billing(invoice, customer)
        invoice_json = json.dumps(_render(invoice))
    refs = {CUSTOMER_REF: customer, INVOICE_REF: progress.fields.get("stripe_invoice_id", INVOICE_REF)}
    for op in plan.operations:
        if progress.done(op.step):
            continue
        payload = resolve(op.payload, refs)
        result = stripe_call(f"{op.action} ({op.step})", partial(_send, client, op, payload))
        log.info("billing_step_sent", run_key=run_key, step=op.step, stripe_id=result.id)
        if op.step == STEP_INVOICE:
            refs[INVOICE_REF] = result.id
            progress.save(
                invoice=invoice_json,
                plan=plan.to_json(),
                stripe_customer_id=customer,
                stripe_invoice_id=result.id,
                status="in_progress",
                **{f"step:{op.step}": result.id},
            )
        else:
            progress.save_step(op.step, result.id)
    progress.save(status="sent")
    log.info("billing_run_sent", run_key=run_key, stripe_invoice_id=refs[INVOICE_REF])
    return progress.result(replayed=False)
