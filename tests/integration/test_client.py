"""meterflow.client against the real API: batching, retries that never count
twice, refusals that are reported, and the typed query results.

Faults are injected between the client and the real API by a transport that
wraps httpx.HTTPTransport: the server is never faked."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from api.billing_job import BillingJob
from api.deps import Clients
from flows.alert_sink import alert_row
from meterflow.client import FailedEvent, IngestResult, Metric, MeterFlowClient, MeterFlowError
from meterflow.storage import ALERTS_COLUMNS
from operators.alerts import Alert
from operators.periods import BillingPeriod
from operators.pricing import TierCharge
from tests.integration.conftest import now_ms, stored_count, wait_for
from tests.integration.stripe_standin import STRIPE_KEY, StripeStandIn

DAY_MS = 86_400_000
LOST = "lost"  # the batch reaches the API, which stores it; the answer never comes back
DOWN = "down"  # the batch never reaches the API


class FaultyNetwork(httpx.HTTPTransport):
    """The real API behind a network that fails the first POST /v1/events
    attempts, one fault per attempt: LOST, DOWN, or (status, headers) for an
    answer a proxy in between gives instead of the API."""

    def __init__(self, *faults: str | tuple[int, dict[str, str]]) -> None:
        super().__init__()
        self.faults = list(faults)
        self.posts = 0  # attempts to send a batch, faulty ones included

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/events":
            return super().handle_request(request)
        self.posts += 1
        if not self.faults:
            return super().handle_request(request)
        fault = self.faults.pop(0)
        if fault == DOWN:
            raise httpx.ConnectError("injected: network down", request=request)
        if fault == LOST:
            response = super().handle_request(request)
            response.read()
            response.close()
            raise httpx.ReadTimeout("injected: answer lost", request=request)
        status, headers = fault
        return httpx.Response(status, headers=headers, json={"error": "injected"}, request=request)


@pytest.fixture
def connect(settings, customer):
    """A client of the session's API with the customer's key; no background
    flusher unless asked, so each test decides when batches go."""

    def make(**options) -> MeterFlowClient:
        options.setdefault("flush_interval_s", None)
        api_key = options.pop("api_key", customer.api_key)
        return MeterFlowClient(f"http://{settings.api_host}:{settings.api_port}", api_key, **options)

    return make


def usage_is(client: MeterFlowClient, customer_id: str, expected: int, start: int, end: int | None = None):
    """A check for wait_for: the customer's api_calls from `start` to `end` (default: now) are `expected`."""
    return lambda: client.usage(customer_id, "api_calls", start, end or now_ms()).value == expected


def test_batches_add_up_to_the_usage_and_the_invoice(connect, customer):
    cid, start = customer.customer_id, now_ms()
    with connect(batch_size=700) as client:
        ids = [client.track(cid, "api_request", {"bytes": 1000, "endpoint": f"/e{i % 3}"}) for i in range(2500)]
        assert client.buffered == 2500 - 3 * 700  # each full buffer went at once
        assert client.flush() == IngestResult(accepted=400, duplicates=0, failed=[])
        assert client.buffered == 0 and len(set(ids)) == 2500

        wait_for(usage_is(client, cid, 2500, start), what="usage of every batch")
        end = now_ms()
        bandwidth = client.usage(cid, "bandwidth", start, end, group_by="endpoint")
        assert (bandwidth.value, bandwidth.unit) == (Decimal(2_500_000), "bytes")
        assert bandwidth.breakdown == {"/e0": 834_000, "/e1": 833_000, "/e2": 833_000}
        assert (bandwidth.customer_id, bandwidth.start, bandwidth.end) == (cid, start, end)

        invoice = client.calculate_invoice(cid, start, end)
    lines = {line.metric_code: line for line in invoice.lines}
    assert lines["api_calls"].quantity == 2500 and lines["api_calls"].subtotal == Decimal("1.50")
    assert lines["api_calls"].tiers == (
        TierCharge(1, Decimal(0), Decimal(1000), Decimal(1000), Decimal(0), Decimal(0)),
        TierCharge(2, Decimal(1000), Decimal(10000), Decimal(1500), Decimal("0.001"), Decimal("1.5")),
    )
    assert lines["bandwidth"].subtotal == Decimal("25") and lines["bandwidth"].tiers == ()
    assert invoice.subtotal == Decimal("26.5") and isinstance(invoice.subtotal, Decimal)
    assert (invoice.customer_id, invoice.period_start, invoice.period_end) == (cid, start, end)
    assert (invoice.currency, invoice.status) == ("USD", "draft")


def test_threads_track_at_once_with_the_background_flusher(connect, customer):
    cid, start = customer.customer_id, now_ms()
    with connect(batch_size=300, flush_interval_s=0.1) as client:

        def track(count: int) -> list[str]:
            return [client.track(cid, "api_request") for _ in range(count)]

        with ThreadPoolExecutor(4) as pool:
            ids = [i for tracked in pool.map(track, [500] * 4) for i in tracked]
    assert len(set(ids)) == 2000 and client.buffered == 0 and client.failed_events == []
    with connect() as reader:
        wait_for(usage_is(reader, cid, 2000, start), what="usage of every thread's events")


def test_a_batch_resent_after_a_lost_answer_is_counted_once(connect, customer, clickhouse, settings):
    cid, start = customer.customer_id, now_ms()
    network = FaultyNetwork(LOST)
    with connect(transport=network) as client:
        for _ in range(300):
            client.track(cid, "api_request", {"bytes": 10})
        result = client.flush()
        # The first copy was stored; the client only saw the answer to the second.
        assert result == IngestResult(accepted=0, duplicates=300, failed=[])
        assert network.posts == 2
        wait_for(usage_is(client, cid, 300, start), what="usage of the batch")
        time.sleep(1.0)  # time enough for a second copy to arrive, were there one
        assert client.usage(cid, "api_calls", start, now_ms()).value == 300
    assert stored_count(clickhouse, settings, cid) == 300


@pytest.mark.parametrize(
    "fault", [(503, {}), (500, {}), (429, {"Retry-After": "1"})], ids=["503", "500", "429-retry-after"]
)
def test_a_refused_batch_is_sent_again(connect, customer, fault):
    cid, start = customer.customer_id, now_ms()
    network = FaultyNetwork(fault)
    began = time.monotonic()
    with connect(transport=network) as client:
        for _ in range(50):
            client.track(cid, "api_request")
        assert client.flush() == IngestResult(accepted=50, duplicates=0, failed=[])
        assert network.posts == 2
        if fault[0] == 429:
            assert time.monotonic() - began >= 1.0  # waited as long as the server asked
        wait_for(usage_is(client, cid, 50, start), what="usage after the retry")


def test_undelivered_events_stay_buffered_for_the_next_flush(connect, customer):
    cid, start = customer.customer_id, now_ms()
    network = FaultyNetwork(DOWN, DOWN)
    with connect(transport=network, max_retries=1) as client:
        for _ in range(25):
            client.track(cid, "api_request")
        with pytest.raises(MeterFlowError) as down:
            client.flush()
        assert down.value.status is None and "ConnectError" in str(down.value)
        assert client.buffered == 25
        assert client.flush() == IngestResult(accepted=25, duplicates=0, failed=[])
        assert client.buffered == 0
        wait_for(usage_is(client, cid, 25, start), what="usage after the network came back")


def test_refused_events_are_reported_never_dropped(connect, customer):
    cid = customer.customer_id
    with connect() as client:
        client.track(cid, "api_request", {"bytes": 1})
        too_old = client.track(cid, "api_request", timestamp=now_ms() - 40 * DAY_MS)
        not_mine = client.track("someone-else", "api_request")
        too_long = client.track(cid, "api_request", {"note": "x" * 1001})
        result = client.flush()
        assert (result.accepted, result.duplicates) == (1, 0)
        reasons = {failure.transaction_id: failure.reason for failure in result.failed}
        assert set(reasons) == {too_old, not_mine, too_long}
        assert "customer_id" in reasons[not_mine]
        assert client.failed_events == result.failed


def test_the_background_flusher_sends_and_keeps_refusals(connect, customer):
    cid, start = customer.customer_id, now_ms()
    with connect(flush_interval_s=0.2) as client:
        client.track(cid, "api_request")
        refused = client.track(cid, "api_request", timestamp=0)
        failed = wait_for(lambda: client.failed_events, what="the background flush")
        assert [f.transaction_id for f in failed] == [refused] and isinstance(failed[0], FailedEvent)
        assert client.buffered == 0
        wait_for(usage_is(client, cid, 1, start), what="usage of the flushed event")


def test_a_bad_key_raises_and_is_not_retried(connect):
    network = FaultyNetwork()
    client = connect(api_key="mf_not-a-key", transport=network)
    client.track("nobody", "api_request")
    with pytest.raises(MeterFlowError) as refused:
        client.flush()
    assert refused.value.status == 401 and refused.value.error
    assert network.posts == 1 and client.buffered == 1
    with pytest.raises(MeterFlowError) as query:
        client.usage("nobody", "api_calls", 0, now_ms())
    assert query.value.status == 401
    with pytest.raises(MeterFlowError):  # closing does not hide events it could not deliver
        client.close()
    assert client.buffered == 1


def test_metrics_catalog(connect):
    with connect() as client:
        metrics = {m.code: m for m in client.metrics()}
    assert metrics["api_calls"] == Metric("api_calls", "API Calls", "api_request", "COUNT", None, "calls")
    assert metrics["bandwidth"] == Metric("bandwidth", "Bandwidth", "api_request", "SUM", "bytes", "bytes")
    assert {"storage_peak", "compute_time"} <= set(metrics)


def test_alerts_newest_first_and_by_kind(connect, customer, clickhouse, settings):
    """Alerts as the dataflow's alert sink stores them, read through the API."""
    cid, at = customer.customer_id, now_ms()
    fraud = Alert(
        cid, "api_calls", "fraud_pattern", "critical", 0.42, at - DAY_MS, at,
        {"similarity": 0.42, "is_fraud": True}, created_at=at - 1000, event_time=at - 2000,
    )  # fmt: skip
    spike = Alert(cid, "bandwidth", "usage_spike", "warning", float("inf"), at - 3_600_000, at, created_at=at)
    clickhouse.insert(
        f"{settings.clickhouse_database}.alerts", [alert_row(fraud), alert_row(spike)], column_names=ALERTS_COLUMNS
    )
    with connect() as client:
        alerts = client.alerts(cid)
        assert [a.alert_id for a in alerts] == [spike.alert_id, fraud.alert_id]
        newest, oldest = alerts
        assert (newest.kind, newest.severity, newest.score) == ("usage_spike", "warning", None)
        assert (oldest.metric, oldest.score, oldest.window_start, oldest.window_end) == (
            "api_calls", 0.42, at - DAY_MS, at,
        )  # fmt: skip
        assert oldest.evidence == {"similarity": Decimal("0.42"), "is_fraud": True}
        assert (oldest.created_at, oldest.event_time) == (at - 1000, at - 2000)
        assert [a.alert_id for a in client.alerts(cid, kind="fraud_pattern")] == [fraud.alert_id]
        assert client.alerts(cid, since=at + 1) == []
        assert len(client.alerts(cid, limit=1)) == 1


def test_a_stored_invoice_has_its_status_and_pdf(connect, customer, settings):
    """An invoice of a closed period, stored by the billing job (live, Stripe
    stood in for: a dry run stores nothing), read back as the client's Invoice."""
    cid = customer.customer_id
    three_days_ago = datetime.now(timezone.utc).date() - timedelta(days=3)
    period = BillingPeriod.days(three_days_ago, three_days_ago)
    with connect() as client:
        for i in range(1200):
            client.track(cid, "api_request", {"bytes": 100}, timestamp=period.start_ms + i * 60_000)
        client.flush()
        wait_for(usage_is(client, cid, 1200, period.start_ms, period.end_ms), what="usage of the period")
        with StripeStandIn() as stripe:
            live = dataclasses.replace(
                settings, billing_grace_hours=0.0, stripe_api_key=STRIPE_KEY, stripe_api_base=stripe.base_url
            )
            clients = Clients.connect(live)
            try:
                (billed,) = BillingJob(clients).run(period, customers={cid}).customers
            finally:
                clients.close()

        stored = client.invoice(billed.invoice_id)
        calculated = client.calculate_invoice(cid, period.start_ms, period.end_ms)
        with pytest.raises(MeterFlowError) as unknown:
            client.invoice("inv_000000000000000000000000")
    assert unknown.value.status == 404
    assert stored.invoice.invoice_id == calculated.invoice_id
    assert (stored.invoice.status, calculated.status) == ("sent", "draft")
    # 200 calls past the free tier and 120,000 bytes: 0.20 + 1.20
    assert stored.invoice.subtotal == calculated.subtotal == Decimal("1.40")
    assert stored.invoice.lines == calculated.lines
    assert stored.pdf_url is not None and httpx.get(stored.pdf_url).content.startswith(b"%PDF")
