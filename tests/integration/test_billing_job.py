"""The billing job on the session's real services (Redis, ClickHouse, S3,
the webhook outbox) with Stripe stood in for, run in this process so that a
failure can be injected for exactly one customer:

- one customer's failure of any kind is reported and every other customer
  is still billed; so is one closed invoice's failing late-usage check;
- a dry run (no Stripe key, or --dry-run) changes nothing at all: Redis,
  S3, the webhook outbox and Stripe are as they were, and it says what a
  live run would do (which the live run then does);
- the scheduler follows the same rule.

Usage is written straight to ClickHouse (validation only takes events of
the last 30 days) for customers of this test alone.
"""

from __future__ import annotations

import dataclasses
import decimal
import os
import subprocess
import sys
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Iterator

import pytest

import api.billing_job as billing_job
from api.billing import PeriodOpen
from api.billing_job import BillingJob, report_lines, run_scheduler
from api.deps import Clients
from api.invoice_store import InvoiceStore
from meterflow.settings import Settings
from meterflow.storage import EVENTS_COLUMNS
from operators.invoices import invoice_id_for
from operators.periods import BillingPeriod
from tests.integration.conftest import Customer, wait_for
from tests.integration.stripe_standin import STRIPE_KEY, StripeStandIn
from tests.integration.test_alert_webhook import Receiver
from tests.integration.test_billing_operations import register, utc_today

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def insert_usage(clickhouse, settings: Settings, customer_id: str, at_ms: int, calls: int) -> None:
    """`calls` API requests of `customer_id` at `at_ms`, straight into ClickHouse."""
    at = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
    rows = [[f"tx-{uuid.uuid4().hex}", customer_id, "api_request", at + timedelta(seconds=i), {}] for i in range(calls)]
    clickhouse.insert(f"{settings.clickhouse_database}.events", rows, column_names=EVENTS_COLUMNS)


@pytest.fixture
def stand_in() -> Iterator[StripeStandIn]:
    with StripeStandIn() as s:
        yield s


def live_settings(settings: Settings, stand_in: StripeStandIn) -> Settings:
    return dataclasses.replace(
        settings, stripe_api_key=STRIPE_KEY, stripe_api_base=stand_in.base_url, stripe_max_network_retries=0
    )


@pytest.fixture
def live_clients(settings, stand_in) -> Iterator[Clients]:
    clients = Clients.connect(live_settings(settings, stand_in))
    yield clients
    clients.close()


def stripe_invoices_of(stand_in: StripeStandIn, customer_id: str) -> list[dict]:
    return [o for o in stand_in.objects.values()
            if o["object"] == "invoice" and o["metadata"].get("meterflow_customer_id") == customer_id]  # fmt: skip


# -- one customer's failure stops nobody else ---------------------------------------

MARCH_2033 = BillingPeriod.days(date(2033, 3, 1), date(2033, 3, 7))
AFTER_MARCH_2033 = BillingPeriod.days(date(2033, 3, 8), date(2033, 3, 14))


def closed(period: BillingPeriod) -> int:
    """A moment after the period's 48-hour grace."""
    return period.end_ms + 49 * HOUR_MS


def poison(monkeypatch, name: str, victim: str) -> None:
    """Make `api.billing_job.<name>` fail for exactly the customer `victim`, as a
    hostile usage value would (decimal.InvalidOperation), or anything else."""
    real = getattr(billing_job, name)

    def poisoned(*args, **kwargs):
        values = [*args, *kwargs.values()]
        if victim in values or any(getattr(v, "customer_id", None) == victim for v in values):
            raise decimal.InvalidOperation(f"poisoned {name} for {victim}")
        return real(*args, **kwargs)

    monkeypatch.setattr(billing_job, name, poisoned)


@pytest.mark.parametrize("step", ["calculate_invoice", "render_invoice_pdf", "publish", "run_billing"])
def test_a_failing_customer_in_the_middle_stops_nobody_else(step, monkeypatch, clickhouse, settings, live_clients, stand_in):
    prefix = f"iso-{uuid.uuid4().hex[:8]}"
    first, victim, last = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"  # the victim sorts in the middle
    for customer_id in (first, victim, last):
        insert_usage(clickhouse, settings, customer_id, MARCH_2033.start_ms + HOUR_MS, 1500)
    poison(monkeypatch, step, victim)

    report = BillingJob(live_clients).run(MARCH_2033, closed(MARCH_2033), customers={first, victim, last})
    by_customer = {c.customer_id: c for c in report.customers}
    assert [c.customer_id for c in report.customers] == [first, victim, last]
    assert (by_customer[victim].status, report.failed) == ("error", [by_customer[victim]])
    assert f"poisoned {step}" in by_customer[victim].error and not report.ok  # the CLI exits 1 on it
    assert any(victim in line and "ERROR" in line for line in report_lines(report))
    for customer_id in (first, last):
        assert (by_customer[customer_id].status, by_customer[customer_id].error) == ("sent", None)
        assert len(stripe_invoices_of(stand_in, customer_id)) == 1

    # The next run, the fault gone, bills the victim; the others have nothing left to do.
    monkeypatch.undo()
    again = BillingJob(live_clients).run(MARCH_2033, closed(MARCH_2033), customers={first, victim, last})
    assert again.ok and {c.customer_id: (c.status, bool(c.done)) for c in again.customers} == {
        first: ("sent", False), victim: ("sent", True), last: ("sent", False),
    }  # fmt: skip
    assert len(stripe_invoices_of(stand_in, victim)) == 1


def test_a_failing_late_usage_check_stops_nobody_else(monkeypatch, clickhouse, settings, live_clients, stand_in):
    prefix = f"late-{uuid.uuid4().hex[:8]}"
    victim, other = f"{prefix}-a", f"{prefix}-b"
    for customer_id in (victim, other):
        insert_usage(clickhouse, settings, customer_id, MARCH_2033.start_ms + HOUR_MS, 1500)
        insert_usage(clickhouse, settings, customer_id, AFTER_MARCH_2033.start_ms + HOUR_MS, 1200)
    assert BillingJob(live_clients).run(MARCH_2033, closed(MARCH_2033), customers={victim, other}).ok
    # Late usage for both closed invoices; reading the victim's fails.
    for customer_id in (victim, other):
        insert_usage(clickhouse, settings, customer_id, MARCH_2033.end_ms - HOUR_MS, 1000)
    poison(monkeypatch, "period_usage", victim)

    report = BillingJob(live_clients).run(AFTER_MARCH_2033, closed(AFTER_MARCH_2033), customers={victim, other})
    victim_march = invoice_id_for(victim, MARCH_2033.start_ms, MARCH_2033.end_ms)
    other_march = invoice_id_for(other, MARCH_2033.start_ms, MARCH_2033.end_ms)
    assert [(f.invoice_id, f.customer_id) for f in report.late_usage_failures] == [(victim_march, victim)]
    assert not report.ok and any(victim_march in line and "ERROR" in line for line in report_lines(report))
    assert [(a.invoice_id, a.metric_code, a.quantity) for a in report.adjustments] == [(other_march, "api_calls", 1000)]
    assert {c.customer_id: (c.status, c.error) for c in report.customers} == {victim: ("sent", None), other: ("sent", None)}
    store = InvoiceStore(live_clients.redis)
    carried = store.load(invoice_id_for(other, AFTER_MARCH_2033.start_ms, AFTER_MARCH_2033.end_ms)).invoice.lines
    assert [(line.adjusts, line.quantity) for line in carried if line.adjusts] == [(other_march, 1000)]

    # The victim's late usage is recorded by the next run, once it can be read.
    monkeypatch.undo()
    later = BillingJob(live_clients).run(AFTER_MARCH_2033, closed(AFTER_MARCH_2033), customers={victim, other})
    assert later.ok and [(a.invoice_id, a.quantity) for a in later.adjustments] == [(victim_march, 1000)]


def insert_storage(clickhouse, settings: Settings, customer_id: str, at_ms: int, gb: int) -> None:
    """One storage reading of `gb` GB, straight into ClickHouse."""
    at = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
    row = [f"tx-{uuid.uuid4().hex}", customer_id, "storage", at, {"gb_stored": str(gb)}]
    clickhouse.insert(f"{settings.clickhouse_database}.events", [row], column_names=EVENTS_COLUMNS)


def test_an_invoice_beyond_stripes_limit_is_reported_and_the_others_are_billed(
    clickhouse, settings, redis, live_clients, stand_in
):
    period = BillingPeriod.month(2033, 6)
    prefix = f"big-{uuid.uuid4().hex[:8]}"
    first, victim, last = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    for customer_id in (first, last):
        insert_usage(clickhouse, settings, customer_id, period.start_ms + HOUR_MS, 1500)
    insert_storage(clickhouse, settings, victim, period.start_ms + HOUR_MS, 10_000_000)  # $1,000,000.00

    for dry_run in (True, False):  # the dry run says so as well
        report = BillingJob(live_clients, dry_run=dry_run).run(period, closed(period), customers={first, victim, last})
        by_customer = {c.customer_id: c for c in report.customers}
        assert report.failed == [by_customer[victim]] and by_customer[victim].status == "error"
        assert "100000000 cents exceeds Stripe's limit of 99999999 cents" in by_customer[victim].error
        (line,) = [line for line in report_lines(report) if victim in line]
        assert "ERROR" in line and "Stripe's limit" in line
        assert {by_customer[c].status for c in (first, last)} == ({"new"} if dry_run else {"sent"})
    # Nothing of the victim's reached Stripe, nor was stored or claimed.
    assert stripe_invoices_of(stand_in, victim) == []
    assert not [o for o in stand_in.objects.values() if o.get("metadata", {}).get("meterflow_customer_id") == victim]
    assert InvoiceStore(redis).get(invoice_id_for(victim, period.start_ms, period.end_ms)) is None
    assert not redis.exists(f"billing:periods:{victim}")
    assert [len(stripe_invoices_of(stand_in, c)) for c in (first, last)] == [1, 1]


def test_a_stripe_refusal_in_the_job_keeps_the_period_claimed(clickhouse, settings, redis, live_clients, stand_in):
    period = BillingPeriod.month(2033, 7)
    customer_id = f"refused-{uuid.uuid4().hex[:12]}"
    insert_usage(clickhouse, settings, customer_id, period.start_ms + HOUR_MS, 1500)
    stand_in.fail("POST", "/v1/invoices$", status=400, error_type="invalid_request_error", message="No such customer")

    (refused,) = BillingJob(live_clients).run(period, closed(period), customers={customer_id}).customers
    assert refused.status == "error" and "Stripe refused" in refused.error
    stored = InvoiceStore(redis).load(refused.invoice_id)
    assert stored.status == "finalized"  # the job's invoice of the period exists: the claim is its
    assert redis.zrange(f"billing:periods:{customer_id}", 0, -1) == [f"{period.start_ms}:{period.end_ms}".encode()]

    (sent,) = BillingJob(live_clients).run(period, closed(period), customers={customer_id}).customers
    assert (sent.status, sent.error) == ("sent", None) and len(stripe_invoices_of(stand_in, customer_id)) == 1


# -- a dry run is dry -----------------------------------------------------------------


def snapshot(redis, s3, settings: Settings, customer_id: str) -> dict:
    """What billing could write: every billing, invoice and Stripe key in Redis
    (value by DUMP), the customer's webhook deliveries, and the PDFs in S3."""
    patterns = ["invoice:*", "invoices:*", "adjustments*", "billing:*", "stripe:*", f"webhook:deliveries:{customer_id}"]
    keys = sorted({k for pattern in patterns for k in redis.scan_iter(match=pattern, count=1000)})
    objects = s3.list_objects(settings.s3_bucket, prefix="invoices/", recursive=True)
    return {
        "redis": {k: redis.dump(k) for k in keys},
        "s3": sorted((o.object_name, o.etag) for o in objects),
    }


def billing_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`meterflow billing ...` as an operator runs it, configured by `settings` (and `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "meterflow.cli", "billing", *args], env={**os.environ, **settings.as_env(), **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_dry_run_changes_nothing_and_says_what_a_live_run_would_do(
    settings, stand_in, api, customer: Customer, clickhouse, redis, s3
):
    receiver = Receiver()
    try:
        register(api, customer, receiver.url, ["invoice.created", "invoice.finalized"])
        today = utc_today()
        period = BillingPeriod.days(today - timedelta(days=6), today - timedelta(days=4))  # its grace has ended
        later = BillingPeriod.days(today - timedelta(days=3), today - timedelta(days=3))
        insert_usage(clickhouse, settings, customer.customer_id, period.start_ms + HOUR_MS, 1500)
        args = ["run", "--period", period.label.replace("_", ".."), "--customer", customer.customer_id]
        live = live_settings(settings, stand_in)
        before = snapshot(redis, s3, settings, customer.customer_id)

        dry = billing_cli(settings, *args)  # no Stripe key: a dry run
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run: nothing was changed" in dry.stdout
        (dry_line,) = [line for line in dry.stdout.splitlines() if customer.customer_id in line]
        assert "new" in dry_line and "[draft,pdf,finalized,sent]" in dry_line
        flagged = billing_cli(live, *args, "--dry-run")  # a key, but --dry-run
        assert flagged.returncode == 0 and "dry run: nothing was changed" in flagged.stdout, flagged.stderr
        assert snapshot(redis, s3, settings, customer.customer_id) == before and stand_in.requests == []

        # The live run does what the dry run said, and so changes all of it.
        done = billing_cli(live, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        (live_line,) = [line for line in done.stdout.splitlines() if customer.customer_id in line]
        assert "dry run" not in done.stdout and live_line == dry_line.replace("new      ", "sent     ")
        invoice_id = invoice_id_for(customer.customer_id, period.start_ms, period.end_ms)
        assert InvoiceStore(redis).load(invoice_id).status == "sent"
        assert snapshot(redis, s3, settings, customer.customer_id)["s3"] != before["s3"]
        assert redis.exists(f"webhook:deliveries:{customer.customer_id}")
        assert len(stripe_invoices_of(stand_in, customer.customer_id)) == 1

        # Late usage of the closed period: a dry run finds the adjustment and records nothing.
        insert_usage(clickhouse, settings, customer.customer_id, period.end_ms - HOUR_MS, 100)
        before = snapshot(redis, s3, settings, customer.customer_id)
        stripe_calls = len(stand_in.requests)
        next_dry = billing_cli(settings, "run", "--period", later.label.replace("_", ".."), "--customer", customer.customer_id)
        assert next_dry.returncode == 0, next_dry.stdout + next_dry.stderr
        assert f"{invoice_id} api_calls +100" in next_dry.stdout and "found (not recorded)" in next_dry.stdout
        assert "[draft,pdf,finalized,sent]" in next_dry.stdout  # the next invoice would carry it
        assert snapshot(redis, s3, settings, customer.customer_id) == before and len(stand_in.requests) == stripe_calls
    finally:
        receiver.server.shutdown()


def test_a_period_still_in_its_grace_is_refused_with_its_closing_time(settings):
    today = utc_today()
    period = BillingPeriod.days(today - timedelta(days=1), today - timedelta(days=1))
    refused = billing_cli(settings, "run", "--period", period.label.replace("_", ".."), BILLING_GRACE_HOURS=str(24 * 365))
    assert refused.returncode == 1
    assert f"closes at {(today + timedelta(days=365)).isoformat()}T00:00:00Z" in refused.stderr, refused.stderr


def test_an_invalid_period_says_which_forms_work(settings):
    refused = billing_cli(settings, "run", "--period", "2026-13")
    assert refused.returncode == 2
    assert "month must be in 1..12" in refused.stderr and "YYYY-MM (month 01-12) or YYYY-MM-DD..YYYY-MM-DD" in refused.stderr


# -- the scheduler ------------------------------------------------------------------------


def run_scheduler_until(clients: Clients, now_s: list[float], passes: int, dry_run: bool = False) -> None:
    """Run the scheduler with the clock `now_s[0]` until it has made `passes` passes."""
    made = [0]

    def clock() -> float:
        made[0] += 1
        return now_s[0]

    stop = threading.Event()
    scheduler = threading.Thread(target=run_scheduler, args=(clients, stop, 0.01), kwargs={"clock": clock, "dry_run": dry_run})
    scheduler.start()
    try:
        wait_for(lambda: made[0] > passes, what=f"{passes} scheduler passes")
    finally:
        stop.set()
        scheduler.join(30)


def test_the_scheduler_closes_last_month_once_its_grace_has_ended_and_only_live(settings, clickhouse, redis, s3, stand_in):
    """A clock in 2031: the month before is January 2031, whose usage belongs to this customer alone."""
    customer_id = f"sched-{uuid.uuid4().hex[:12]}"
    january = BillingPeriod.month(2031, 1)
    insert_usage(clickhouse, settings, customer_id, january.start_ms + 9 * 24 * HOUR_MS, 2500)
    invoice_id = invoice_id_for(customer_id, january.start_ms, january.end_ms)
    store = InvoiceStore(redis)
    after_grace = [january.end_ms / 1000 + 49 * 3600]

    # Without a Stripe key every pass is a dry run: nothing is closed, nothing written.
    before = snapshot(redis, s3, settings, customer_id)
    dry = Clients.connect(settings)
    try:
        run_scheduler_until(dry, after_grace, passes=3)
    finally:
        dry.close()
    assert store.get(invoice_id) is None and snapshot(redis, s3, settings, customer_id) == before

    live = Clients.connect(live_settings(settings, stand_in))
    try:
        run_scheduler_until(live, [january.end_ms / 1000 + 3600], passes=3)  # inside the 48-hour grace
        assert store.get(invoice_id) is None
        with pytest.raises(PeriodOpen):
            BillingJob(live).run(january, int((january.end_ms / 1000 + 3600) * 1000))
        run_scheduler_until(live, after_grace, passes=1)
        stored = store.load(invoice_id)
        run_scheduler_until(live, after_grace, passes=3)  # more passes over a closed month
    finally:
        live.close()
    again = store.load(invoice_id)
    assert (again.status, again.fields) == ("sent", stored.fields)  # later passes changed nothing
    (line,) = again.invoice.lines
    assert (line.metric_code, line.quantity) == ("api_calls", 2500)
    assert again.get("pdf_key") == f"invoices/{customer_id}/2031-01.pdf"
    assert len(stripe_invoices_of(stand_in, customer_id)) == 1


def test_the_scheduler_without_a_key_previews_each_month_once(settings, monkeypatch):
    """A dry scheduler logs its preview of a month once, not every interval; a new month is previewed again."""
    runs: list[str] = []
    real_run = BillingJob.run

    def counted(job, period, now_ms=None, customers=None):
        runs.append(period.label)
        return real_run(job, period, now_ms, customers)

    monkeypatch.setattr(BillingJob, "run", counted)
    now_s = [BillingPeriod.month(2035, 1).end_ms / 1000 + 49 * 3600]
    passes = [0]

    def clock() -> float:
        passes[0] += 1
        return now_s[0]

    stop = threading.Event()
    dry = Clients.connect(settings)
    scheduler = threading.Thread(target=run_scheduler, args=(dry, stop, 0.01), kwargs={"clock": clock})
    scheduler.start()
    try:
        wait_for(lambda: passes[0] > 5, what="5 scheduler passes")
        assert runs == ["2035-01"]
        now_s[0] = BillingPeriod.month(2035, 2).end_ms / 1000 + 49 * 3600  # the clock reaches March
        seen = passes[0]
        wait_for(lambda: passes[0] > seen + 5, what="5 more scheduler passes")
    finally:
        stop.set()
        scheduler.join(30)
        dry.close()
    assert runs == ["2035-01", "2035-02"]
