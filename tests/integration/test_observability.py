"""Prometheus metrics of the API and the dataflow, request ids, and no
secret in any log, against the session's real system.

The session's counters are shared with every other test of the session,
so each test compares a scrape before with one after its own traffic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.metrics import failure_class
from api.middleware import request_id_from
from api.serve import multiprocess_dir
from meterflow.local import API_ARGV, http_ok
from meterflow.settings import Settings
from meterflow.stack import free_port
from operators.alerts import ALERT_KINDS
from operators.dedup import INGEST_ID_HEADER
from operators.periods import BillingPeriod
from tests.integration.conftest import Customer, make_event, now_ms, stored_count, wait_for
from tests.integration.stripe_standin import StripeStandIn
from tests.integration.test_billing import insert_events
from tests.integration.test_pipeline import produce_raw

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(response: httpx.Response) -> Samples:
    """Every sample of a Prometheus text page, keyed by name and labels."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    """A fresh connection each time (several API workers: any may answer)."""
    return parse(httpx.get(url, timeout=10))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def api_metrics_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}/metrics"


def flow_metrics_url(settings: Settings) -> str:
    return f"http://{settings.flow_metrics_host}:{settings.flow_metrics_port}/metrics"


def log_lines(path: Path) -> list[dict]:
    """The JSON lines of a process's log (the stack's own banner lines,
    uvicorn's plain-text lines and a last line still being written are
    skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


# -- the API ---------------------------------------------------------------------


def test_api_counts_requests_by_route_template_and_events_exactly(api, customer, settings):
    url = api_metrics_url(settings)
    before = scrape(url)
    first = [make_event(customer.customer_id) for _ in range(5)]
    assert api.post("/v1/events", json={"events": first}, headers=customer.headers).json() == {
        "accepted": 5, "duplicates": 0, "failed": []
    }  # fmt: skip
    old = make_event(customer.customer_id, timestamp=now_ms() - 40 * 86_400_000)
    second = [make_event(customer.customer_id), make_event(customer.customer_id), first[0], old]
    answer = api.post("/v1/events", json={"events": second}, headers=customer.headers).json()
    assert (answer["accepted"], answer["duplicates"], len(answer["failed"])) == (2, 1, 1)
    unknown = f"no-such-metric-{uuid.uuid4().hex}"
    assert api.get(f"/v1/pricing/{unknown}", headers=customer.headers).status_code == 404
    assert api.get(f"/nowhere/{unknown}").status_code == 404
    after = scrape(url)

    assert delta(before, after, "meterflow_api_events_accepted_total") == 7
    assert delta(before, after, "meterflow_api_events_duplicate_total") == 1
    assert delta(before, after, "meterflow_api_events_failed_total", reason="timestamp") == 1
    posts = {"method": "POST", "route": "/v1/events", "status": "200"}
    assert delta(before, after, "meterflow_api_requests_total", **posts) == 2
    assert delta(before, after, "meterflow_api_request_duration_seconds_count", **posts) == 2
    assert delta(before, after, "meterflow_api_request_duration_seconds_bucket", **posts, le="+Inf") == 2
    by_template = {"method": "GET", "route": "/v1/pricing/{metric_code}", "status": "404"}
    assert delta(before, after, "meterflow_api_requests_total", **by_template) == 1
    assert delta(before, after, "meterflow_api_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not [key for key in after if unknown in str(key)], "a raw path became a label"


def test_metrics_route_is_public_unlimited_and_not_in_the_schema(api, settings):
    for _ in range(3):
        assert api.get("/metrics").status_code == 200  # no key, no rate limit headers
    assert "X-RateLimit-Limit" not in api.get("/metrics").headers
    assert "/metrics" not in api.get("/openapi.json").json()["paths"]


def test_rate_limited_requests_are_counted(api, customer, settings):
    before = scrape(api_metrics_url(settings))
    alerts = f"/v1/alerts?customer_id={customer.customer_id}"
    statuses = [
        api.get(alerts, headers=customer.headers).status_code for _ in range(settings.rate_limit_requests + 3)
    ]
    after = scrape(api_metrics_url(settings))
    assert statuses.count(429) == 3
    assert delta(before, after, "meterflow_api_rate_limited_total") == 3
    refused = {"method": "GET", "route": "/v1/alerts", "status": "429"}
    assert delta(before, after, "meterflow_api_requests_total", **refused) == 3


def test_failure_classes_are_the_field_at_fault():
    assert failure_class("timestamp is older than 30 days") == "timestamp"
    assert failure_class("property 'region' must be a string, number or boolean") == "properties"
    assert failure_class("customer_id does not match the API key's customer") == "customer_id"
    assert failure_class("something nobody foresaw") == "other"


# -- request ids -------------------------------------------------------------------


def test_request_id_is_echoed_or_generated_and_on_error_answers(api, customer):
    given = f"obs.{uuid.uuid4().hex}_1-2"
    assert api.get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given
    generated = api.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for insane in ("a" * 129, "two words", "a/b", ""):
        echoed = api.get("/health", headers={"X-Request-ID": insane}).headers["X-Request-ID"]
        assert echoed != insane and re.fullmatch(r"[0-9a-f]{32}", echoed)
    # Error answers carry it too: a refused key, a malformed body, no such route.
    refusals = [
        api.get("/v1/usage", headers={"X-Request-ID": given}),
        api.post("/v1/events", json={"events": []}, headers={**customer.headers, "X-Request-ID": given}),
        api.get("/no/such/route", headers={"X-Request-ID": given}),
    ]
    assert [r.status_code for r in refusals] == [401, 422, 404]
    assert all(r.headers["X-Request-ID"] == given for r in refusals)


def test_request_id_is_in_the_log_lines_of_its_request(api, customer, settings):
    given = f"obs-{uuid.uuid4().hex}"
    body = {"customer_id": customer.customer_id, "metric": "api_calls", "days": 2}
    response = api.post(
        "/v1/fraud/baselines/build", json=body, headers={**customer.headers, "X-Request-ID": given}
    )
    assert response.status_code == 200, response.text
    log_file = settings.data_dir / "api" / "api.log"

    def lines_of_request() -> list[dict]:
        return [line for line in log_lines(log_file) if line.get("request_id") == given]

    def both_lines() -> dict[str, dict]:
        found = {line["event"]: line for line in lines_of_request()}
        return found if {"baselines_built", "request"} <= found.keys() else {}

    by_event = wait_for(both_lines, what="the endpoint's and the access log lines")
    # The endpoint's own line (written in the thread pool) and the access line.
    assert by_event["baselines_built"]["customer_id"] == customer.customer_id
    access = by_event["request"]
    assert (access["method"], access["path"], access["route"], access["status"]) == (
        "POST", "/v1/fraud/baselines/build", "/v1/fraud/baselines/build", 200
    )  # fmt: skip
    assert access["duration_ms"] >= 0


def test_an_unexpected_error_answers_500_with_the_request_id(settings):
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        before = parse(client.get("/metrics"))
        response = client.get("/boom", headers={"X-Request-ID": "boom-1"})
        after = parse(client.get("/metrics"))
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert response.headers["X-Request-ID"] == "boom-1"
    assert delta(before, after, "meterflow_api_requests_total", method="GET", route="/boom", status="500") == 1


def test_request_ids_are_checked_before_they_are_trusted():
    assert request_id_from("abc.DEF_123-x") == "abc.DEF_123-x"
    assert request_id_from("a" * 128) == "a" * 128
    for bad in (None, "", "a" * 129, "new\nline", "semi;colon", "sp ace"):
        assert re.fullmatch(r"[0-9a-f]{32}", request_id_from(bad))


# -- the dataflow ------------------------------------------------------------------


def test_dataflow_counts_messages_sinks_dead_letters_and_duplicates(api, customer, settings, clickhouse):
    url = flow_metrics_url(settings)
    before = scrape(url)
    events = [make_event(customer.customer_id) for _ in range(20)]
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.json()["accepted"] == 20
    produce_raw(settings, b"{not json", key=customer.customer_id.encode())
    extra = make_event(customer.customer_id)
    for copy in (b"copy-a", b"copy-b"):  # two copies of one event: the second is dropped
        produce_raw(settings, orjson.dumps(extra), customer.customer_id.encode(), [(INGEST_ID_HEADER, copy)])
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 21, what="stored events")

    def counted() -> Samples | None:
        after = scrape(url)
        wanted = {
            "meterflow_flow_messages_in_total": 23,
            "meterflow_flow_events_valid_total": 22,
            "meterflow_flow_dead_letters_total": 1,
            "meterflow_flow_duplicates_dropped_total": 1,
            "meterflow_flow_clickhouse_rows_total": 21,
            "meterflow_flow_s3_objects_total": 1,
            "meterflow_flow_dedup_seconds_count": 1,
        }
        return after if all(delta(before, after, n) >= v for n, v in wanted.items()) else None

    after = wait_for(counted, what="dataflow counters")
    for sink in ("clickhouse", "s3", "dlq"):
        assert delta(before, after, "meterflow_flow_sink_write_seconds_count", sink=sink) >= 1, sink
    for kind in ALERT_KINDS:  # every kind has a series from the start
        assert ("meterflow_flow_alerts_total", (("kind", kind),)) in after


def test_consumer_lag_is_reported_per_partition_and_zero_once_caught_up(api, customer, settings, clickhouse):
    events = [make_event(customer.customer_id) for _ in range(10)]
    assert api.post("/v1/events", json={"events": events}, headers=customer.headers).json()["accepted"] == 10
    # One more straight to Kafka, to learn which partition the customer's events are on.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    partitions: list[int] = []
    producer.produce(
        settings.topic_events, orjson.dumps(make_event(customer.customer_id)), customer.customer_id.encode(),
        on_delivery=lambda err, msg: partitions.append(msg.partition()),
    )  # fmt: skip
    assert producer.flush(10) == 0
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 11, what="stored events")

    def caught_up() -> dict[str, float] | None:
        lags = {
            dict(labels)["partition"]: v
            for (name, labels), v in scrape(flow_metrics_url(settings)).items()
            if name == "meterflow_flow_consumer_lag" and dict(labels)["topic"] == settings.topic_events
        }
        return lags if lags and not any(lags.values()) else None

    lags = wait_for(caught_up, what="a lag of 0 on every partition read")
    assert str(partitions[0]) in lags
    assert set(lags) <= {str(p) for p in range(settings.topic_partitions)}


# -- several API workers, and secrets ------------------------------------------------


@dataclasses.dataclass
class SecondApi:
    """An API configured as in production: two workers, an admin token, a
    (stood-in) live Stripe key; on the session's services and data dir."""

    settings: Settings
    client: httpx.Client
    log_file: Path


@pytest.fixture(scope="module")
def second_api(stack, settings) -> Iterator[SecondApi]:
    with StripeStandIn() as stripe:
        second = dataclasses.replace(
            settings,
            api_port=free_port(),
            api_workers=2,
            admin_token=f"adm-{secrets.token_hex(16)}",
            stripe_api_key=f"sk_test_{secrets.token_hex(16)}",
            stripe_api_base=stripe.base_url,
            billing_grace_hours=0.0,  # a live run bills only periods whose grace has ended
        )
        url = f"http://{second.api_host}:{second.api_port}"
        name = f"api-observed-{second.api_port}"
        stack.add_process(
            name, API_ARGV, env={**os.environ, **second.as_env()}, health=http_ok(f"{url}/health"),
            port=second.api_port,
        )  # fmt: skip
        stack.start_service(name)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                yield SecondApi(second, client, settings.data_dir / name / f"{name}.log")
        finally:
            stack.stop_service(name)


def customer_of(second: SecondApi) -> Customer:
    """A fresh customer, created with the admin token."""
    customer_id = f"cust-{uuid.uuid4().hex[:12]}"
    response = second.client.post(
        "/v1/admin/keys",
        json={"customer_id": customer_id, "name": "observed"},
        headers={"X-Admin-Token": second.settings.admin_token},
    )
    assert response.status_code == 201, response.text
    return Customer(customer_id, response.json()["api_key"])


def test_every_worker_answers_metrics_with_the_totals_of_all_workers(second_api):
    customer = customer_of(second_api)
    url = api_metrics_url(second_api.settings)
    before = scrape(url)
    base = f"http://{second_api.settings.api_host}:{second_api.settings.api_port}"
    for _ in range(10):  # a new connection each: the kernel spreads them over the workers
        event = make_event(customer.customer_id)
        response = httpx.post(f"{base}/v1/events", json={"events": [event]}, headers=customer.headers)
        assert response.json()["accepted"] == 1
    scrapes = [scrape(url) for _ in range(8)]

    assert {delta(before, after, "meterflow_api_events_accepted_total") for after in scrapes} == {10}
    files = list(multiprocess_dir(second_api.settings).glob("*.db"))
    assert len({re.search(r"_(\d+)\.db$", f.name).group(1) for f in files}) == 2, files


def test_secrets_never_reach_the_logs(second_api, api, customer, settings, clickhouse):
    second = second_api.settings
    observed = customer_of(second_api)
    wrong_admin_token = f"adm-{secrets.token_hex(16)}"
    wrong_api_key = f"mf_{secrets.token_hex(16)}"
    refused = second_api.client.post(
        "/v1/admin/keys", json={"customer_id": "x", "name": "y"}, headers={"X-Admin-Token": wrong_admin_token}
    )
    assert refused.status_code == 401
    alerts = f"/v1/alerts?customer_id={observed.customer_id}"
    assert second_api.client.get(alerts, headers={"X-API-Key": wrong_api_key}).status_code == 401
    # A key put in a URL by mistake: the access log leaves the query string out.
    assert second_api.client.get(f"{alerts}&api_key={observed.api_key}").status_code == 401

    # Events posted with the keys, through both APIs and the dataflow.
    events = [make_event(observed.customer_id, properties={"bytes": 100_000}) for _ in range(3)]
    posted = second_api.client.post("/v1/events", json={"events": events}, headers=observed.headers)
    assert posted.json()["accepted"] == 3
    assert api.post("/v1/events", json={"events": [make_event(customer.customer_id)]},
                    headers=customer.headers).json()["accepted"] == 1  # fmt: skip
    # A live run bills whole closed months. Their usage is written straight to
    # ClickHouse: the API refuses events over 30 days old, all of last month's on a 31st.
    month = BillingPeriod.month_before(now_ms())
    t = month.end_ms - 60_000
    last_month = [make_event(observed.customer_id, timestamp=t, properties={"bytes": 100_000}) for _ in range(3)]
    insert_events(clickhouse, settings, last_month + [make_event(customer.customer_id, timestamp=t)])
    wait_for(lambda: stored_count(clickhouse, settings, observed.customer_id) == 6, what="stored events")
    period = {"start": month.start_ms, "end": month.end_ms}
    live = second_api.client.post(
        "/v1/billing/run", json={"customer_id": observed.customer_id, **period}, headers=observed.headers
    )
    assert live.status_code == 200 and live.json()["stripe_operations"]["summary"]["status"] == "sent", live.text
    dry = api.post("/v1/billing/run", json={"customer_id": customer.customer_id, **period}, headers=customer.headers)
    assert dry.status_code == 200, dry.text

    logs = {
        "session api": settings.data_dir / "api" / "api.log",
        "dataflow": settings.data_dir / "dataflow" / "dataflow.log",
        "second api": second_api.log_file,
    }
    # The scan only means something if the traffic above was logged, at DEBUG,
    # the Stripe SDK's request lines included.
    wait_for(lambda: "Request to Stripe api" in logs["second api"].read_text(), what="Stripe SDK log lines")
    assert any(line.get("route") == "/v1/billing/run" for line in log_lines(logs["second api"]))
    assert any(line.get("event") == "clickhouse_inserted" for line in log_lines(logs["dataflow"]))
    secret_values = {
        "API key": observed.api_key,
        "session API key": customer.api_key,
        "admin token": second.admin_token,
        "wrong admin token": wrong_admin_token,
        "wrong API key": wrong_api_key,
        "Stripe key": second.stripe_api_key,
        "S3 secret key": settings.s3_secret_key,
    }
    leaks = [
        f"{what} in {where}"
        for where, path in logs.items()
        for what, secret in secret_values.items()
        if secret in path.read_text(errors="replace")
    ]
    assert not leaks
