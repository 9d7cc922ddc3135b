"""Stripe's webhooks: POST /v1/stripe/webhook.

Stripe tells MeterFlow when a customer paid an invoice (`invoice.paid`) or
a payment failed (`invoice.payment_failed`); the stored invoice moves to
paid or failed and the customer's own webhooks hear of it. Stripe signs
each delivery (`Stripe-Signature`) with the endpoint's secret
(`STRIPE_WEBHOOK_SECRET`); anything not signed by it is refused with 400
and changes nothing. Stripe retries until it gets a 2xx, and may deliver an
event twice: status moves are idempotent, and so are the customer webhooks
(their event id is the invoice id plus the new status).
"""

from __future__ import annotations

from typing import Any

import stripe
import structlog
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api.billing_job import invoice_event_data
from api.deps import Clients, ClientsDep
from api.errors import ServiceUnavailable
from api.invoice_store import FAILED, PAID, InvoiceStore, TransitionRefused
from meterflow.webhook_outbox import publish

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/stripe", tags=["billing"])

# Stripe event type -> (invoice status, customer webhook event type)
HANDLED = {
    "invoice.paid": (PAID, "invoice.paid"),
    "invoice.payment_failed": (FAILED, "invoice.payment_failed"),
}


class WebhookAck(BaseModel):
    received: bool
    event_type: str
    invoice_id: str | None = None  # MeterFlow's, when the event concerned one of its invoices
    status: str | None = None  # the invoice's status after the event


def _handle(clients: Clients, event: stripe.Event) -> WebhookAck:
    ack = WebhookAck(received=True, event_type=event.type)
    if event.type not in HANDLED:
        return ack  # acknowledged, so Stripe stops sending it; nothing to do
    status, customer_event = HANDLED[event.type]
    stripe_invoice: dict[str, Any] = event.data.object.to_dict()
    store = InvoiceStore(clients.redis)
    invoice_id = (stripe_invoice.get("metadata") or {}).get("meterflow_invoice_id") or store.by_stripe_id(
        stripe_invoice.get("id", "")
    )
    stored = store.get(invoice_id) if invoice_id else None
    if stored is None:
        # Billed outside the job (POST /v1/billing/run) or not by MeterFlow: nothing stored to update.
        log.info("stripe_event_for_unknown_invoice", event_id=event.id, stripe_invoice_id=stripe_invoice.get("id"))
        return ack
    try:
        moved = store.move(stored.invoice_id, status)
    except TransitionRefused:
        # e.g. a late `payment_failed` after `paid`: the invoice keeps its status.
        log.warning("stripe_event_out_of_order", event_id=event.id, invoice_id=stored.invoice_id, status=stored.status)
        return ack.model_copy(update={"invoice_id": stored.invoice_id, "status": stored.status})
    if moved:
        log.info("invoice_status_from_stripe", invoice_id=stored.invoice_id, status=status, event_id=event.id)
    data = invoice_event_data(store.load(stored.invoice_id))
    publish(clients.redis, stored.customer_id, customer_event, f"{stored.invoice_id}.{status}", data)
    return ack.model_copy(update={"invoice_id": stored.invoice_id, "status": status})


@router.post("/webhook", response_model=WebhookAck)
async def stripe_webhook(request: Request, clients: ClientsDep) -> WebhookAck:
    """Takes Stripe's signed invoice events (no API key: the signature is the authentication)."""
    secret = clients.settings.stripe_webhook_secret
    if not secret:
        raise ServiceUnavailable("STRIPE_WEBHOOK_SECRET is not set: Stripe events cannot be verified")
    payload = await request.body()
    try:
        event = stripe.Webhook.construct_event(payload, request.headers.get("stripe-signature"), secret)
    except stripe.SignatureVerificationError as exc:
        raise HTTPException(400, f"invalid Stripe signature: {exc.user_message or exc}") from exc
    except ValueError as exc:
        raise HTTPException(400, "the body is not a Stripe event") from exc
    return await run_in_threadpool(_handle, clients, event)
