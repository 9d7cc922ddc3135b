"""The billing job: close a period for every customer, month after month.

    meterflow billing run --period 2026-10      once, from cron or by hand
    meterflow billing schedule                  a loop that closes each month when its grace ends

For one period the job

1. refuses to start before the period's end plus `BILLING_GRACE_HOURS`, so
   events still in flight (and late ones within the grace) are counted;
2. records late usage of already closed invoices as adjustments
   (operators.adjustments), which the next invoice of each customer carries;
3. for every customer with usage in the period or pending adjustments, takes
   the invoice through its steps, each done at most once and recorded
   before the next starts:

       draft       computed from ClickHouse + pending adjustments, stored   -> webhook invoice.created
       pdf         rendered, stored in S3 invoices/<customer>/<period>.pdf
       finalized   frozen; later usage becomes adjustments                  -> webhook invoice.finalized
       sent        billed through Stripe (api.billing)

Closing a period is live only: it needs `STRIPE_API_KEY`. Without one, or
with `dry_run`, the job is a dry run: it reads what it needs, computes the
same invoices and adjustments and reports what it would do, and writes
nothing (no Redis key, no PDF, no webhook, no Stripe call), so an
unconfigured scheduler cannot close months nobody can bill.

Running the job again for the same period changes nothing, and a job
stopped anywhere (crash, Stripe down) resumes where it stopped. Only one
job per period runs at a time (a Redis lock). Customers are isolated: any
failure of one customer's steps, or of the late-usage check of one closed
invoice, is reported (report line, `failed`, the CLI's exit status 1) and
retried on the next run, and every other customer is still billed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

import structlog

from api.billing import PeriodOpen, claim_period, ensure_closed, run_billing
from api.deps import Clients
from api.errors import ServiceUnavailable
from api.invoice_store import DRAFT, FINALIZED, InvoiceStore, StoredInvoice, now_iso
from api.invoicing import calculate_invoice, period_usage
from api.routers.invoices import invoice_out
from api.usage import run_query
from meterflow.webhook_outbox import publish
from operators.adjustments import Adjustment, adjustment_lines, late_usage_adjustments
from operators.billing import ensure_within_stripe_limits
from operators.events import MAX_AGE_MS
from operators.invoice_pdf import render_invoice_pdf
from operators.invoices import Invoice, invoice_id_for
from operators.metrics import catalog_by_code
from operators.periods import DAY_MS, BillingPeriod, pdf_key
from operators.pricing import pricing_by_code

log = structlog.get_logger(__name__)

LOCK_TIMEOUT_S = 3600
_STORE_RETRIES = 5  # optimistic transactions lost to a concurrent writer
# Steps a dry run reports for an invoice not drafted yet
_ALL_STEPS = ["draft", "pdf", "finalized", "sent"]


class JobBusy(Exception):
    """Another billing job holds this period."""


@dataclass
class CustomerResult:
    customer_id: str
    invoice_id: str
    # the invoice's status after this run (a dry run: now; "new" if not drafted yet), or no_usage / error
    status: str
    total: Decimal = Decimal(0)
    done: list[str] = field(default_factory=list)  # steps carried out by this run (a dry run: would carry out)
    error: str | None = None


@dataclass(frozen=True)
class LateUsageFailure:
    """The late-usage check of one closed invoice failed; the next run checks it again."""

    invoice_id: str
    customer_id: str
    error: str


@dataclass
class JobReport:
    period: BillingPeriod
    adjustments: list[Adjustment]  # recorded (a dry run: found, not recorded)
    customers: list[CustomerResult]
    late_usage_failures: list[LateUsageFailure] = field(default_factory=list)
    dry_run: bool = False

    @property
    def failed(self) -> list[CustomerResult]:
        return [c for c in self.customers if c.error]

    @property
    def ok(self) -> bool:
        """Nothing failed: every customer and every closed invoice was handled."""
        return not self.failed and not self.late_usage_failures


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


def customers_with_usage(clients: Clients, period: BillingPeriod) -> set[str]:
    sql = (
        f"SELECT DISTINCT customer_id FROM `{clients.settings.clickhouse_database}`.events "  # sql-ok
        "WHERE timestamp >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') "
        "AND timestamp <= fromUnixTimestamp64Milli({end:Int64}, 'UTC')"
    )
    return {row[0] for row in run_query(clients.clickhouse, sql, {"start": period.start_ms, "end": period.end_ms})}


def late_usage(
    clients: Clients, store: InvoiceStore, now_ms: int, record: bool
) -> tuple[list[Adjustment], list[LateUsageFailure]]:
    """Adjustments for usage that reached closed invoices' periods after they
    were finalized, recorded when `record` (else only found, for a dry run).
    Only periods that can still receive events (validation refuses events
    older than 30 days) are looked at. Each invoice is checked on its own: one
    that fails (its usage unreadable, unpriceable) is reported and checked
    again next run, and the others are still recorded."""
    pricing = pricing_by_code()
    found_all: list[Adjustment] = []
    failures: list[LateUsageFailure] = []
    for stored in store.closed_since(now_ms - MAX_AGE_MS - DAY_MS):
        try:
            found_all.extend(_late_usage_of(clients, store, stored, pricing, record))
        except Exception as exc:  # noqa: BLE001 - one invoice's failure must not stop the others
            failures.append(LateUsageFailure(stored.invoice_id, stored.customer_id, _reason(exc)))
            log.exception("late_usage_failed", invoice_id=stored.invoice_id, customer_id=stored.customer_id)
    return found_all, failures


def _late_usage_of(
    clients: Clients, store: InvoiceStore, stored: StoredInvoice, pricing: dict, record: bool
) -> list[Adjustment]:
    for _ in range(_STORE_RETRIES):
        invoice = stored.invoice
        usage = period_usage(clients, invoice.customer_id, invoice.period_start, invoice.period_end)
        found = late_usage_adjustments(invoice.customer_id, invoice.invoice_id, stored.accounted, usage, pricing, now_iso())
        if not record:
            return found
        if store.record_adjustments(stored, found):
            for adj in found:
                log.info(
                    "late_usage_adjustment", invoice_id=adj.invoice_id, metric=adj.metric_code,
                    quantity=str(adj.quantity), amount=str(adj.amount), adjustment_id=adj.adjustment_id,
                )  # fmt: skip
            return found
        stored = store.load(invoice.invoice_id)  # another job wrote first: read again
    raise ServiceUnavailable(f"late usage of {stored.invoice_id} kept changing; run the job again")


def invoice_event_data(stored: StoredInvoice) -> dict:
    """What every invoice webhook carries (created, finalized, paid, payment
    failed): the invoice as the API shows it, its current status, its PDF key."""
    data = invoice_out(stored.invoice).model_dump()  # Decimals: the outbox writes them exactly
    data["status"] = stored.status
    data["pdf_key"] = stored.get("pdf_key")
    return data


class BillingJob:
    """Closes periods. Live only with a Stripe key and not `dry_run`; else
    every run is a dry run that changes nothing (see the module docstring)."""

    def __init__(self, clients: Clients, dry_run: bool = False) -> None:
        self.clients = clients
        self.store = InvoiceStore(clients.redis)
        self.dry_run = dry_run or not clients.settings.stripe_api_key

    def run(self, period: BillingPeriod, now_ms: int | None = None, customers: set[str] | None = None) -> JobReport:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        ensure_closed(self.clients, period, now_ms)
        if self.dry_run:  # no lock either: a dry run writes nothing at all
            return self._run(period, now_ms, customers)
        lock = self.clients.redis.lock(
            f"billing:job:{period.start_ms}:{period.end_ms}", timeout=LOCK_TIMEOUT_S, blocking=False
        )
        if not lock.acquire():
            raise JobBusy(f"a billing job for {period.label} is running")
        try:
            return self._run(period, now_ms, customers)
        finally:
            lock.release()

    def _run(self, period: BillingPeriod, now_ms: int, customers: set[str] | None) -> JobReport:
        adjustments, late_failures = late_usage(self.clients, self.store, now_ms, record=not self.dry_run)
        if customers is None:
            customers = customers_with_usage(self.clients, period)
            customers |= self.store.customers_with_pending_adjustments()
            customers |= {a.customer_id for a in adjustments}
        close = self._preview_customer if self.dry_run else self._close_customer
        results = [close(period, customer, adjustments) for customer in sorted(customers)]
        report = JobReport(period, adjustments, results, late_failures, self.dry_run)
        log.info(
            "billing_job_done", period=period.label, dry_run=self.dry_run, customers=len(results),
            failed=len(report.failed), late_usage_failures=len(late_failures), adjustments=len(adjustments),
        )  # fmt: skip
        return report

    def _close_customer(self, period: BillingPeriod, customer_id: str, _: list[Adjustment]) -> CustomerResult:
        invoice_id = invoice_id_for(customer_id, period.start_ms, period.end_ms)
        result = CustomerResult(customer_id, invoice_id, status="no_usage")
        try:
            stored = self.store.get(invoice_id) or self._draft(period, customer_id, result)
            if stored is None:
                return result
            result.total = stored.invoice.subtotal
            if not stored.get("pdf_key"):
                self._store_pdf(stored, period)
                result.done.append("pdf")
            stored = self.store.load(invoice_id)
            if stored.status == DRAFT:
                self._finalize(stored)
                result.done.append("finalized")
            stored = self.store.load(invoice_id)
            if stored.status == FINALIZED:
                result.done.append(self._push_to_stripe(stored))
            result.status = self.store.load(invoice_id).status
        except Exception as exc:  # noqa: BLE001 - whatever fails one customer, the others are billed
            result.status, result.error = "error", _reason(exc)
            log.exception("billing_customer_failed", customer_id=customer_id, invoice_id=invoice_id, error=result.error)
        return result

    def _preview_customer(self, period: BillingPeriod, customer_id: str, found: list[Adjustment]) -> CustomerResult:
        """What `_close_customer` would do, computed from what is stored, writing nothing."""
        invoice_id = invoice_id_for(customer_id, period.start_ms, period.end_ms)
        result = CustomerResult(customer_id, invoice_id, status="no_usage")
        try:
            stored = self.store.get(invoice_id)
            if stored is None:
                carried = self.store.pending_adjustments(customer_id) + [a for a in found if a.customer_id == customer_id]
                invoice = calculate_invoice(
                    self.clients, customer_id, period.start_ms, period.end_ms, adjustment_lines(carried, catalog_by_code())
                )  # fmt: skip
                if invoice.lines:
                    ensure_within_stripe_limits(invoice)  # as _draft does
                    result.status, result.total, result.done = "new", invoice.subtotal, list(_ALL_STEPS)
                return result
            result.status, result.total = stored.status, stored.invoice.subtotal
            result.done = [step for step, todo in (
                ("pdf", not stored.get("pdf_key")), ("finalized", stored.status == DRAFT),
                ("sent", stored.status in (DRAFT, FINALIZED)),
            ) if todo]  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - as in _close_customer
            result.status, result.error = "error", _reason(exc)
            log.exception("billing_customer_failed", customer_id=customer_id, invoice_id=invoice_id, error=result.error)
        return result

    def _draft(self, period: BillingPeriod, customer_id: str, result: CustomerResult) -> StoredInvoice | None:
        metrics = catalog_by_code()
        for _ in range(_STORE_RETRIES):
            carried = self.store.pending_adjustments(customer_id)
            invoice = calculate_invoice(
                self.clients, customer_id, period.start_ms, period.end_ms, adjustment_lines(carried, metrics)
            )
            if not invoice.lines:
                return None
            # An invoice Stripe cannot take is neither stored nor claimed: nothing could bill it.
            ensure_within_stripe_limits(invoice)
            claim_period(self.clients.redis, customer_id, period.start_ms, period.end_ms)
            if self.store.create_draft(invoice, carried):
                stored = self.store.load(invoice.invoice_id)
                publish(
                    self.clients.redis, customer_id, "invoice.created",
                    f"{invoice.invoice_id}.created", invoice_event_data(stored),
                )  # fmt: skip
                result.done.append("draft")
                log.info("invoice_drafted", invoice_id=invoice.invoice_id, customer_id=customer_id)
                return stored
            if (existing := self.store.get(invoice.invoice_id)) is not None:
                return existing  # another run drafted it first
        raise ServiceUnavailable(f"adjustments of {customer_id} kept changing; run the job again")

    def _store_pdf(self, stored: StoredInvoice, period: BillingPeriod) -> None:
        key = pdf_key(stored.customer_id, period)
        data = render_invoice_pdf(stored.invoice)
        self.clients.s3.put_object(
            self.clients.settings.s3_bucket, key, io.BytesIO(data), len(data), content_type="application/pdf"
        )
        self.store.set_fields(stored.invoice_id, pdf_key=key)

    def _finalize(self, stored: StoredInvoice) -> None:
        usage_lines = [line for line in stored.invoice.lines if line.adjusts is None]
        if self.store.finalize(stored, {line.metric_code: line.quantity for line in usage_lines}):
            finalized = self.store.load(stored.invoice_id)
            publish(
                self.clients.redis, stored.customer_id, "invoice.finalized",
                f"{stored.invoice_id}.finalized", invoice_event_data(finalized),
            )  # fmt: skip
            log.info("invoice_finalized", invoice_id=stored.invoice_id, customer_id=stored.customer_id)

    def _push_to_stripe(self, stored: StoredInvoice) -> str:
        invoice: Invoice = stored.invoice
        run = run_billing(self.clients, invoice.customer_id, invoice.period_start, invoice.period_end, invoice)
        if run.stripe_invoice_id is None:  # nothing to bill (an invoice of zero lines is never stored)
            return run.status
        if run.plan.total_amount_cents != stored.total_cents:
            # The period was billed earlier through POST /v1/billing/run with
            # other usage; Stripe keeps that bill, reconciliation shows it.
            log.warning(
                "billed_amount_differs", invoice_id=stored.invoice_id,
                stored_cents=stored.total_cents, stripe_cents=run.plan.total_amount_cents,
            )  # fmt: skip
        self.store.mark_sent(stored.invoice_id, run.stripe_invoice_id)
        log.info("invoice_sent", invoice_id=stored.invoice_id, stripe_invoice_id=run.stripe_invoice_id)
        return "sent"


def report_lines(report: JobReport) -> list[str]:
    """The job's outcome as printed by the CLI."""
    what = "found (not recorded)" if report.dry_run else "recorded"
    lines = [f"period {report.period.label}: {len(report.customers)} customers, "
             f"{len(report.adjustments)} late-usage adjustments {what}"]  # fmt: skip
    if report.dry_run:
        lines.insert(0, "dry run: nothing was changed; [steps] are what a live run would do")
    for adj in report.adjustments:
        lines.append(f"  adjustment {adj.adjustment_id}: {adj.invoice_id} {adj.metric_code} "
                     f"{adj.quantity:+} -> ${adj.amount:+}")  # fmt: skip
    for failure in report.late_usage_failures:
        lines.append(f"  late usage of {failure.invoice_id} ({failure.customer_id})  ERROR {failure.error}")
    for c in report.customers:
        steps = ",".join(c.done) or "nothing to do"
        tail = f"  ERROR {c.error}" if c.error else ""
        lines.append(f"  {c.customer_id:<30} {c.invoice_id}  {c.status:<9} ${c.total:>10}  [{steps}]{tail}")
    return lines


def run_scheduler(
    clients: Clients,
    stop: threading.Event,
    interval_s: float,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
) -> None:
    """Close the last month as soon as its grace ends, then keep checking.

    Every `interval_s` the scheduler runs the job for the month before now
    (`clock()`, Unix seconds) once its grace has ended; a month already
    closed costs one pass over stored invoices and changes nothing. Without a
    Stripe key (or with `dry_run`) the job is a dry run, as for `meterflow
    billing run`: it logs what it would do once per month (a full dry job
    every interval would only repeat it), remembered in this process; a
    failed preview is tried again."""
    job = BillingJob(clients, dry_run)
    previewed: BillingPeriod | None = None
    while not stop.is_set():
        now_ms = int(clock() * 1000)
        period = BillingPeriod.month_before(now_ms)
        if job.dry_run and period == previewed:
            stop.wait(interval_s)
            continue
        try:
            report = job.run(period, now_ms)
            if report.dry_run:
                log.info(
                    "billing_job_dry_run", period=period.label,
                    would_bill=[c.customer_id for c in report.customers if c.done and not c.error],
                )  # fmt: skip
                if report.ok:
                    previewed = period
            if not report.ok:
                log.warning(
                    "billing_job_incomplete", period=period.label, failed=[c.customer_id for c in report.failed],
                    late_usage_failed=[f.invoice_id for f in report.late_usage_failures],
                )  # fmt: skip
        except PeriodOpen:
            pass
        except JobBusy:
            log.info("billing_job_busy", period=period.label)
        except Exception:  # noqa: BLE001 - the scheduler outlives a failed run; the next pass retries
            log.exception("billing_job_failed", period=period.label)
        stop.wait(interval_s)


def job_report_json(report: JobReport) -> str:
    return json.dumps(
        {
            "period": report.period.label,
            "dry_run": report.dry_run,
            "adjustments": [a.to_dict() for a in report.adjustments],
            "late_usage_failures": [dataclasses.asdict(f) for f in report.late_usage_failures],
            "customers": [
                {"customer_id": c.customer_id, "invoice_id": c.invoice_id, "status": c.status,
                 "total": str(c.total), "done": c.done, "error": c.error}  # fmt: skip
                for c in report.customers
            ],
        },
        indent=2,
    )
