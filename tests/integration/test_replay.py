"""Replay from the S3 backup through the real dataflow: totals do not move,
and rows lost from ClickHouse come back."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from meterflow.cli import main as meterflow_cli
from meterflow.replay import replay
from tests.integration.conftest import make_event, stored_count, wait_for
from tests.integration.test_pipeline import s3_backup_lines


def post(api, customer, events):
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.status_code == 200 and response.json()["accepted"] == len(events), response.text


def total_bytes(api, customer, events) -> int:
    response = api.get("/v1/usage", headers=customer.headers, params={
        "customer_id": customer.customer_id, "metric": "bandwidth",
        "start": min(e["timestamp"] for e in events), "end": max(e["timestamp"] for e in events),
    })  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["value"]


def copies_in_backup(s3, settings, events) -> int:
    day = time.strftime("%Y/%m/%d", time.gmtime(events[0]["timestamp"] / 1000))
    wanted = {e["transaction_id"] for e in events}
    return sum(1 for line in s3_backup_lines(s3, settings, day) if line["transaction_id"] in wanted)


def test_replaying_a_day_changes_no_total(api, customer, settings, clickhouse, s3):
    events = [make_event(customer.customer_id, properties={"bytes": 3}) for _ in range(50)]
    post(api, customer, events)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 50, what="rows")
    wait_for(lambda: copies_in_backup(s3, settings, events) == 50, what="backup")
    assert total_bytes(api, customer, events) == 150

    day = datetime.fromtimestamp(events[0]["timestamp"] / 1000, tz=timezone.utc).date()
    result = replay(settings, day, day, customer_id=customer.customer_id)
    assert result.events == 50

    # The dataflow took every replayed copy (it backs each up again)...
    wait_for(lambda: copies_in_backup(s3, settings, events) == 100, timeout_s=60, what="replayed copies")
    # ...and counted none twice.
    assert stored_count(clickhouse, settings, customer.customer_id) == 50
    assert total_bytes(api, customer, events) == 150


def test_replay_restores_rows_lost_from_clickhouse(api, customer, settings, clickhouse, s3, monkeypatch):
    events = [make_event(customer.customer_id, properties={"bytes": 5}) for _ in range(30)]
    post(api, customer, events)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 30, what="rows")
    wait_for(lambda: copies_in_backup(s3, settings, events) == 30, what="backup")

    clickhouse.command(
        "ALTER TABLE meterflow.events DELETE WHERE customer_id = {c:String}",
        parameters={"c": customer.customer_id},
        settings={"mutations_sync": 2},
    )
    assert stored_count(clickhouse, settings, customer.customer_id) == 0

    # Through the CLI, as an operator would run it.
    day = datetime.fromtimestamp(events[0]["timestamp"] / 1000, tz=timezone.utc).date()
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    assert meterflow_cli(["replay", "--from", day.isoformat(), "--customer", customer.customer_id]) == 0
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 30, timeout_s=60, what="restored")
    assert total_bytes(api, customer, events) == 150
