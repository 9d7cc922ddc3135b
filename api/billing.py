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
refused (409).

Two more guards keep usage from being billed twice:

- A customer's billed periods never overlap. Before anything is created in
  Stripe the period is claimed in `billing:periods:<customer_id>` (a zset of
  `<start>:<end>` by start, claimed atomically in Lua); a period overlapping
  a claimed one is refused (`PeriodOverlap`, 409) naming the invoice that
  covers it, while the exact same period stays an idempotent replay. A
  customer's first claim seeds the set, once (`billing:periods_seeded`),
  with the periods billed before claims existed: the stored invoices and
  the live progress records.
- A live run through the API (`invoice` None) bills only a whole UTC
  calendar month, the periods the billing job closes (`NotAMonth`, 409):
  a shorter claim would keep the job from billing the rest of its month.
- With no record (never billed, or the record was lost), Stripe is asked
  first: an invoice whose metadata carries this MeterFlow invoice id is
  adopted and resumed instead of creating another one.

Stripe saves the answer to every executed request under its idempotency
key, a 500 included, and replays it for 24 hours. A step Stripe answered
with a 5xx is therefore retried (on the next run) under a new key,
`<step key>:retry<n>` (counters in the hash `billing:key_attempts`), and
only after asking Stripe whether the failed attempt created the object
anyway: the invoice by search, items by their `meterflow_idempotency_key`
metadata, finalization by the invoice's status, the customer by search.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from functools import partial
from typing import Any, Callable, TypeVar

import redis
import stripe
import structlog
from redis.exceptions import LockError

from api.deps import Clients
from api.errors import Conflict, ServiceUnavailable, UpstreamRefused
from api.invoice_store import InvoiceStore
from api.invoicing import calculate_invoice
from api.routers.invoices import invoice_out
from api.schemas import exact_json
from operators.billing import (
    CREATE_INVOICE,
    CREATE_INVOICE_ITEM,
    CUSTOMER_REF,
    FINALIZE_INVOICE,
    INVOICE_REF,
    SEND_INVOICE,
    STEP_FINALIZE,
    STEP_INVOICE,
    STEP_SEND,
    BillingPlan,
    StripeOperation,
    billing_key,
    customer_key,
    ensure_within_stripe_limits,
    parse_customer_map,
    plan_billing,
    resolve,
)
from operators.invoices import Invoice, invoice_id_for
from operators.periods import BillingPeriod, iso_utc

log = structlog.get_logger(__name__)

CUSTOMERS_HASH = "stripe:customers"  # MeterFlow customer_id -> Stripe customer id
RECORD_PREFIX = "billing:"
CLAIMS_PREFIX = "billing:periods:"  # + customer_id: zset "<start>:<end>" by start
CLAIMS_SEEDED = "billing:periods_seeded"  # set of customers whose claims were seeded from earlier bills
RECORD_PATTERN = RECORD_PREFIX + "mf_bill_*"  # progress records (and their locks, which have one more ':')
ATTEMPTS_HASH = "billing:key_attempts"  # idempotency key -> attempts Stripe answered with a 5xx
# Stripe statuses after which nothing is sent any more (send only works on an open invoice)
SETTLED = ("paid", "void", "uncollectible")
# Longer than any run: each Stripe call times out after 80 s and is retried
# STRIPE_MAX_NETWORK_RETRIES times. Should a run outlive it anyway, a second
# run could start; Stripe's idempotency keys still keep it from billing twice.
LOCK_TIMEOUT_S = 600
# Stripe errors worth running again later: nothing is wrong with the request.
TRANSIENT = (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)

T = TypeVar("T")

# KEYS[1] the customer's claims, KEYS[2] the seeded customers; ARGV start,
# end, customer id, then "<start>:<end>" of the periods billed before claims
# existed, added only by the customer's first claim. Returns the claimed
# "<start>:<end>" that overlaps the period (the same period does not), or
# claims the period and returns nil.
_CLAIM = """
if redis.call('SADD', KEYS[2], ARGV[3]) == 1 then
  for i = 4, #ARGV do
    local ms = string.match(ARGV[i], '^(%d+):%d+$')
    redis.call('ZADD', KEYS[1], ms, ARGV[i])
  end
end
local s, e = tonumber(ARGV[1]), tonumber(ARGV[2])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  local ms, me = string.match(member, '^(%d+):(%d+)$')
  ms, me = tonumber(ms), tonumber(me)
  if me >= s and not (ms == s and me == e) then return member end
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1] .. ':' .. ARGV[2])
return false
"""


class PeriodOpen(Conflict):
    """The period's grace has not ended: its usage may still grow."""


class BillingBusy(Conflict):
    """Another run of the same customer and period holds its lock."""


class PeriodOverlap(Conflict):
    """The period overlaps one of the customer's billed (claimed) periods."""

    def __init__(self, customer_id: str, start_ms: int, end_ms: int, covering: tuple[int, int]) -> None:
        self.covering_invoice_id = invoice_id_for(customer_id, *covering)
        super().__init__(
            f"{customer_id}'s period {iso_utc(start_ms)}..{iso_utc(end_ms)} overlaps "
            f"{iso_utc(covering[0])}..{iso_utc(covering[1])}, billed as invoice {self.covering_invoice_id}: "
            "a customer's billed periods never overlap (bill exactly that period to replay it)"
        )


class NotAMonth(Conflict):
    """A live API run of anything but a whole UTC calendar month: its claim
    would overlap the month the billing job closes, leaving that unbilled."""

    def __init__(self, period: BillingPeriod) -> None:
        super().__init__(
            f"period {period.name} is not a whole calendar month: live billing closes whole UTC calendar "
            "months only (`meterflow billing run --period YYYY-MM`, or this API with the month's start, "
            "its first millisecond, and end, its last millisecond, inclusive); "
            "dry runs (no STRIPE_API_KEY) of any range remain available"
        )


class StripeUnavailable(ServiceUnavailable):
    """Stripe could not answer, or answered 5xx or 429, after the SDK's retries."""

    def __init__(self, reason: str, answered_5xx: bool) -> None:
        super().__init__(reason)
        # Stripe saved this 5xx under the idempotency key and replays it: the key is spent.
        self.answered_5xx = answered_5xx


class StripeRefused(UpstreamRefused):
    """Stripe refused the request (invalid request, idempotency, card, authentication)."""


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


def ensure_closed(clients: Clients, period: BillingPeriod, now_ms: int) -> None:
    """Refuse (PeriodOpen) to bill a period before `BILLING_GRACE_HOURS` after
    its end: events still on their way belong on its invoice, and a period
    ending in the future would claim usage that does not exist yet."""
    closes = period.closes_at(int(clients.settings.billing_grace_hours * 3_600_000))
    if now_ms < closes:
        raise PeriodOpen(f"period {period.name} closes at {iso_utc(closes)}: its grace has not ended")


def claim_period(client: redis.Redis, customer_id: str, start_ms: int, end_ms: int) -> None:
    """Claim the period for billing, or raise PeriodOverlap if it overlaps a
    period the customer already claimed (the same period again is fine).
    Periods billed before claims existed count as claimed: the customer's
    first claim seeds them (`_billed_before`), atomically with the claim."""
    seeds = [] if client.sismember(CLAIMS_SEEDED, customer_id) else _billed_before(client, customer_id)
    found = client.eval(
        _CLAIM, 2, CLAIMS_PREFIX + customer_id, CLAIMS_SEEDED, start_ms, end_ms, customer_id, *sorted(seeds)
    )
    if found:
        covering_start, covering_end = (int(v) for v in found.decode().split(":"))
        raise PeriodOverlap(customer_id, start_ms, end_ms, (covering_start, covering_end))


def _billed_before(client: redis.Redis, customer_id: str) -> set[str]:
    """"<start>:<end>" of every period the customer was billed for by what
    predates the claims: the stored invoices and the live progress records
    (whose key hides the customer, so every record's invoice is read; this
    happens once per customer)."""
    periods = {f"{s.invoice.period_start}:{s.invoice.period_end}" for s in InvoiceStore(client).of_customer(customer_id)}
    keys = [k for k in client.scan_iter(match=RECORD_PATTERN, count=1000) if k.count(b":") == 1]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "invoice")
        invoices = pipe.execute()
    for raw in invoices:
        if raw:
            invoice = json.loads(raw)
            if invoice["customer_id"] == customer_id:
                periods.add(f"{invoice['period']['start']}:{invoice['period']['end']}")
    return periods


def _release_claim(client: redis.Redis, customer_id: str, start_ms: int, end_ms: int) -> None:
    client.zrem(CLAIMS_PREFIX + customer_id, f"{start_ms}:{end_ms}")


def _render(invoice: Invoice) -> dict[str, Any]:
    """The invoice as the API shows it, its numbers Decimal (stored with
    `exact_json`, read back with `parse_float=Decimal`)."""
    return invoice_out(invoice).model_dump()


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
            invoice=json.loads(self.fields["invoice"], parse_float=Decimal),
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
    """`call()` with Stripe's failures turned into domain errors: transient
    ones (network, 5xx, rate limit; the SDK has already retried what it
    could) into StripeUnavailable (503: run again to resume), refusals
    (invalid request, reused idempotency key, card, auth) into StripeRefused
    (502) with Stripe's message."""
    try:
        return call()
    except stripe.StripeError as exc:
        message = exc.user_message or str(exc) or type(exc).__name__
        log.warning("stripe_call_failed", what=what, status=exc.http_status, error=message)
        if isinstance(exc, TRANSIENT):
            raise StripeUnavailable(
                f"Stripe unavailable during {what}: {message}; progress is kept, run again to resume",
                answered_5xx=(exc.http_status or 0) >= 500,
            ) from exc
        raise StripeRefused(f"Stripe refused {what}: {message}") from exc


def keyed_call(clients: Clients, what: str, base_key: str, call: Callable[[str], T]) -> T:
    """`call(idempotency key)` through `stripe_call`, under `base_key` or, once
    Stripe answered an attempt with a 5xx (which it replays for that key),
    under `<base_key>:retry<n>`. Callers ask Stripe whether a failed attempt
    took effect before calling again (see the module docstring)."""
    spent = clients.redis.hget(ATTEMPTS_HASH, base_key)
    key = base_key if spent is None else f"{base_key}:retry{int(spent)}"
    try:
        return stripe_call(what, lambda: call(key))
    except StripeUnavailable as exc:
        if exc.answered_5xx:
            clients.redis.hincrby(ATTEMPTS_HASH, base_key, 1)
        raise


def _metadata_query(name: str, value: str) -> str:
    """A Stripe search query for objects whose metadata `name` is `value`."""
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['{name}']:'{quoted}'"


def _ensure_customer(clients: Clients, client: stripe.StripeClient, customer_id: str) -> str:
    known = mapped_customer(clients, customer_id)
    if known:
        return known
    base_key = customer_key(customer_id)
    created = None
    if clients.redis.hexists(ATTEMPTS_HASH, base_key):  # an attempt got a 5xx: did it create the customer?
        found = stripe_call(
            "stripe.customers.search",
            lambda: client.v1.customers.search({"query": _metadata_query("meterflow_customer_id", customer_id)}),
        )
        created = found.data[0] if found.data else None
    if created is None:
        created = keyed_call(
            clients,
            "stripe.customers.create",
            base_key,
            lambda key: client.v1.customers.create(
                {"description": f"MeterFlow customer {customer_id}", "metadata": {"meterflow_customer_id": customer_id}},
                {"idempotency_key": key},
            ),
        )
    # Runs of other periods may create the same customer at the same time
    # (same idempotency key, so the same Stripe customer); the first mapping stays.
    clients.redis.hsetnx(CUSTOMERS_HASH, customer_id, created.id)
    log.info("stripe_customer_created", customer_id=customer_id, stripe_customer_id=created.id)
    return clients.redis.hget(CUSTOMERS_HASH, customer_id).decode()


def _send(client: stripe.StripeClient, op: StripeOperation, payload: dict[str, Any], key: str) -> Any:
    options: stripe.RequestOptions = {"idempotency_key": key}
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
    reached the record (a lost response, a 5xx, a crash before the write).
    Within 24 hours the idempotency keys alone would cover lost answers, not
    a 5xx Stripe saved; so ask Stripe for the invoice's items and status."""
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
    if not (progress.done(STEP_FINALIZE) and progress.done(STEP_SEND)):
        invoice = stripe_call("stripe.invoices.retrieve", lambda: client.v1.invoices.retrieve(invoice_id))
        if invoice.status != "draft" and not progress.done(STEP_FINALIZE):
            progress.save_step(STEP_FINALIZE, invoice_id)
        if invoice.status in SETTLED and not progress.done(STEP_SEND):
            progress.save_step(STEP_SEND, invoice_id)  # paid or closed: there is nothing left to send


def _find_in_stripe(client: stripe.StripeClient, invoice_id: str) -> Any | None:
    """The Stripe invoice created for MeterFlow's `invoice_id`, if any: one
    past its draft first (that is the one billed), else the oldest draft."""
    found = stripe_call(
        "stripe.invoices.search",
        lambda: client.v1.invoices.search({"query": _metadata_query("meterflow_invoice_id", invoice_id)}),
    )
    return min(found.data, key=lambda i: (i.status == "draft", i.created), default=None)


def _adopt(
    client: stripe.StripeClient, progress: _Progress, plan: BillingPlan, invoice_json: str, found: Any
) -> BillingPlan:
    """Rebuild the progress record around the Stripe invoice `found` (the
    record is gone: lost, or never written because the answer was lost) and
    return the plan still to carry out on it."""
    progress.save(
        invoice=invoice_json,
        plan=plan.to_json(),
        stripe_customer_id=found.customer,
        stripe_invoice_id=found.id,
        status="in_progress",
        **{f"step:{STEP_INVOICE}": found.id},
    )
    _reconcile(client, progress, plan)
    if progress.done(STEP_FINALIZE):
        # Stripe's invoice is final: items it lacks can no longer be added,
        # and what it holds is what was billed.
        kept = tuple(op for op in plan.operations if op.action != CREATE_INVOICE_ITEM or progress.done(op.step))
        if len(kept) != len(plan.operations):
            items = [op for op in kept if op.action == CREATE_INVOICE_ITEM]
            plan = replace(
                plan, operations=kept, line_items=len(items),
                total_amount_cents=sum(op.payload["amount"] for op in items),
            )  # fmt: skip
            progress.save(plan=plan.to_json())
    log.warning("billing_record_rebuilt_from_stripe", run_key=plan.idempotency_key, stripe_invoice_id=found.id)
    return plan


def _live_run(clients: Clients, customer_id: str, start_ms: int, end_ms: int, invoice: Invoice | None) -> BillingRun:
    if invoice is None:  # usage as computed now (the billing job checked the grace against its own clock)
        period = BillingPeriod(start_ms, end_ms)
        if not period.is_calendar_month:
            raise NotAMonth(period)
        ensure_closed(clients, period, int(time.time() * 1000))
    run_key = billing_key(customer_id, start_ms, end_ms)
    lock = clients.redis.lock(f"{RECORD_PREFIX}{run_key}:lock", timeout=LOCK_TIMEOUT_S, blocking=False)
    if not lock.acquire():
        raise BillingBusy("a billing run for this customer and period is in progress; try again when it ends")
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
        _reconcile(client, progress, plan)
        log.info("billing_run_resumed", run_key=run_key)
        return _carry_out(clients, client, progress, plan)
    from_api = invoice is None
    invoice = invoice or calculate_invoice(clients, customer_id, start_ms, end_ms)
    if not invoice.lines:
        return BillingRun(_render(invoice), "live", plan_billing(invoice, CUSTOMER_REF), None, None, "no_usage")
    ensure_within_stripe_limits(invoice)  # before anything is claimed or sent
    claim_period(clients.redis, customer_id, start_ms, end_ms)
    invoice_json = exact_json(_render(invoice)).decode()
    try:
        found = _find_in_stripe(client, invoice.invoice_id)
        if found is not None:  # billed before, but the record is gone: resume that invoice
            plan = _adopt(client, progress, plan_billing(invoice, found.customer), invoice_json, found)
        else:
            plan = plan_billing(invoice, _ensure_customer(clients, client, customer_id))
        return _carry_out(clients, client, progress, plan, invoice_json)
    except StripeRefused:
        # Refused before any Stripe invoice exists, nothing is billed: an API
        # run gives its claim back, unless the billing job stored an invoice
        # of the period (its draft claimed it, and keeps it).
        if from_api and not progress.fields and InvoiceStore(clients.redis).get(invoice.invoice_id) is None:
            _release_claim(clients.redis, customer_id, start_ms, end_ms)
        raise


def _carry_out(
    clients: Clients, client: stripe.StripeClient, progress: _Progress, plan: BillingPlan, invoice_json: str = ""
) -> BillingRun:
    """Send the plan's steps not yet done, recording each; `invoice_json` is
    recorded with the Stripe invoice when this run creates it."""
    run_key = plan.idempotency_key
    refs = {CUSTOMER_REF: plan.operations[0].payload["customer"],
            INVOICE_REF: progress.fields.get("stripe_invoice_id", INVOICE_REF)}  # fmt: skip
    for op in plan.operations:
        if progress.done(op.step):
            continue
        payload = resolve(op.payload, refs)
        result = keyed_call(clients, f"{op.action} ({op.step})", op.idempotency_key, partial(_send, client, op, payload))
        log.info("billing_step_sent", run_key=run_key, step=op.step, stripe_id=result.id)
        if op.step == STEP_INVOICE:
            refs[INVOICE_REF] = result.id
            progress.save(
                invoice=invoice_json,
                plan=plan.to_json(),
                stripe_customer_id=refs[CUSTOMER_REF],
                stripe_invoice_id=result.id,
                status="in_progress",
                **{f"step:{op.step}": result.id},
            )
        else:
            progress.save_step(op.step, result.id)
    progress.save(status="sent")
    log.info("billing_run_sent", run_key=run_key, stripe_invoice_id=refs[INVOICE_REF])
    return progress.result(replayed=False)
