"""Outages of the services behind the dataflow: every accepted event is stored
exactly once after the service returns, and the flow never crashes."""

from __future__ import annotations

import os
import signal
import time

from tests.integration.conftest import make_event, stored_count, wait_for
from tests.integration.test_pipeline import s3_backup_lines


def post(api, customer, events):
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(events)


def assert_stored_once_and_backed_up(events, customer, settings, clickhouse, s3):
    count = len(events)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == count, timeout_s=60, what="rows")
    assert stored_count(clickhouse, settings, customer.customer_id, final=False) == count
    day = time.strftime("%Y/%m/%d", time.gmtime(events[0]["timestamp"] / 1000))
    wanted = {e["transaction_id"] for e in events}
    wait_for(lambda: wanted <= {l["transaction_id"] for l in s3_backup_lines(s3, settings, day)}, what="backup")


CLICKHOUSE_OUTAGE_S = 60


def test_clickhouse_outage_stalls_the_flow_and_loses_nothing(api, customer, stack, settings, clickhouse, s3):
    """A minute without ClickHouse: the API keeps ingesting and answers 503
    for queries, the dataflow backs off without crashing, and every event
    is stored once when ClickHouse returns."""
    events = [make_event(customer.customer_id) for _ in range(30)]
    flow_pid = stack.status()["dataflow"].pid
    stack.stop_service("clickhouse")
    down_since = time.monotonic()
    try:
        post(api, customer, events[:15])  # ingest does not need ClickHouse
        usage = api.get("/v1/usage", headers=customer.headers, params={
            "customer_id": customer.customer_id, "metric": "api_calls", "start": 0, "end": events[0]["timestamp"],
        })  # fmt: skip
        assert usage.status_code == 503 and "unavailable" in usage.json()["error"]
        health = api.get("/health").json()
        assert health["dependencies"]["clickhouse"] == "down" and health["status"] == "degraded"
        assert api.get("/health/ready").status_code == 200  # ingest still works
        time.sleep(max(0.0, CLICKHOUSE_OUTAGE_S - (time.monotonic() - down_since)))
        post(api, customer, events[15:])
        assert stack.status()["dataflow"].pid == flow_pid  # retried all along, no crash
    finally:
        stack.start_service("clickhouse")
    assert_stored_once_and_backed_up(events, customer, settings, clickhouse, s3)
    assert stack.status()["dataflow"].pid == flow_pid


def test_s3_outage_stalls_the_flow_and_loses_nothing(api, customer, stack, settings, clickhouse, s3):
    """Natively the broker keeps its log in the same S3 server, so this is
    also a broker outage: ingest answers 503 until S3 is back.

    A 503 after a broker *timeout* is ambiguous (the broker may still have
    written the message once S3 returned), so the client retries with the
    same transaction_id, and the event is counted once either way."""
    events = [make_event(customer.customer_id) for _ in range(30)]
    post(api, customer, events)
    stack.stop_service("s3")
    try:
        time.sleep(2)  # the backup sink (and the broker) now fail and retry
        assert stack.status()["dataflow"].running
        more = [make_event(customer.customer_id)]
        assert api.post("/v1/events", json={"events": more}, headers=customer.headers).status_code == 503
    finally:
        stack.start_service("s3")
    retried = wait_for(
        lambda: (r := api.post("/v1/events", json={"events": more}, headers=customer.headers)).status_code == 200
        and r.json(),
        timeout_s=60,
        what="the retry to be answered",
    )
    assert retried["accepted"] + retried["duplicates"] == 1
    assert_stored_once_and_backed_up(events + more, customer, settings, clickhouse, s3)


def test_redis_outage_is_503_at_the_api_and_stalls_dedup(api, customer, stack, settings, clickhouse):
    events = [make_event(customer.customer_id) for _ in range(10)]
    stack.stop_service("redis")
    try:
        refused = api.post("/v1/events", json={"events": events}, headers=customer.headers)
        assert refused.status_code == 503 and refused.json()["error"]
        assert api.get("/health").json()["dependencies"]["redis"] == "down"
    finally:
        stack.start_service("redis")
    wait_for(lambda: api.post("/v1/events", json={"events": events}, headers=customer.headers).status_code == 200,
             what="API back")  # fmt: skip
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 10, timeout_s=60, what="rows")
    assert stored_count(clickhouse, settings, customer.customer_id, final=False) == 10


def test_killed_dataflow_replays_without_double_counting(api, customer, stack, settings, clickhouse):
    """kill -9, restart: the flow resumes from its last recovery snapshot and
    re-reads what came after it; dedup lets the replayed copies through and
    ReplacingMergeTree collapses them, so every total stays exact."""
    first = [make_event(customer.customer_id, properties={"bytes": 7}) for _ in range(40)]
    post(api, customer, first)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 40, what="first rows")

    os.kill(stack.status()["dataflow"].pid, signal.SIGKILL)
    wait_for(lambda: not stack.status()["dataflow"].running, what="dataflow to die")
    second = [make_event(customer.customer_id, properties={"bytes": 7}) for _ in range(40)]
    post(api, customer, second)  # the API does not need the dataflow
    stack.start_service("dataflow")

    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 80, timeout_s=60, what="all rows")
    total = clickhouse.query(
        "SELECT sum(toUInt64(properties['bytes'])) FROM meterflow.events FINAL WHERE customer_id = {c:String}",
        parameters={"c": customer.customer_id},
    ).result_rows[0][0]
    assert total == 80 * 7
