"""Stripe billing: POST /v1/billing/run."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from api.billing import BillingRun, run_billing
from api.deps import ApiKeyDep, ClientsDep
from api.routers.invoices import InvoiceOut, PeriodRequest, validated_period
from api.schemas import ExactJSONResponse

router = APIRouter(prefix="/v1/billing", tags=["billing"])


class OperationOut(BaseModel):
    step: int  # position in the run, from 1, as the contract's clients read it
    name: str  # the step's stable name, the suffix of its idempotency key
    action: str
    payload: dict[str, Any]
    idempotency_key: str


class SummaryOut(BaseModel):
    total_amount_cents: int
    currency: str
    line_items: int
    idempotency_key: str
    stripe_customer_id: str | None
    stripe_invoice_id: str | None
    status: Literal["dry_run", "no_usage", "sent"]
    replayed: bool


class StripeOperationsOut(BaseModel):
    mode: Literal["dry_run", "live"]
    operations: list[OperationOut]
    summary: SummaryOut


class BillingRunOut(BaseModel):
    invoice: InvoiceOut
    stripe_operations: StripeOperationsOut


def billing_out(run: BillingRun) -> BillingRunOut:
    plan = run.plan
    return BillingRunOut(
        invoice=InvoiceOut.model_validate(run.invoice),
        stripe_operations=StripeOperationsOut(
            mode=run.mode,  # type: ignore[arg-type]
            operations=[
                OperationOut(
                    step=position, name=op.step, action=op.action,
                    payload=dict(op.payload), idempotency_key=op.idempotency_key,
                )  # fmt: skip
                for position, op in enumerate(plan.operations, start=1)
            ],
            summary=SummaryOut(
                total_amount_cents=plan.total_amount_cents,
                currency=plan.currency,
                line_items=plan.line_items,
                idempotency_key=plan.idempotency_key,
                stripe_customer_id=run.stripe_customer_id,
                stripe_invoice_id=run.stripe_invoice_id,
                status=run.status,  # type: ignore[arg-type]
                replayed=run.replayed,
            ),
        ),
    )


@router.post("/run", response_model=BillingRunOut, response_class=ExactJSONResponse)
def run(body: PeriodRequest, key: ApiKeyDep, clients: ClientsDep) -> BillingRunOut:
    """Bill the period's invoice through Stripe: the planned operations (dry
    run, without STRIPE_API_KEY) or the same operations sent (live). Running
    a period again never bills it twice; see docs/billing.md."""
    validated_period(body, key)
    return billing_out(run_billing(clients, body.customer_id, body.start, body.end))
