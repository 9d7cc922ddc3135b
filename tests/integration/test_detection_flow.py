"""The streaming detectors in the real dataflow: history in, a stolen key's
night-time traffic in, a fraud alert out — in the alerts table, the alerts
topic and GET /v1/alerts — and detector state that survives a kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from flows.run import recovery_dir
from tests.integration.conftest import make_event, stored_count, wait_for
from tests.integration.test_pipeline import read_topic, s3_backup_lines

HOUR_MS = 3_600_000
PER_HOUR = 10


def day_start(days_ago: int) -> datetime:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_ago)


def events_for(customer_id: str, days_ago: int, hours: range) -> list[dict]:
    """PER_HOUR api_request events in each of `hours` (UTC) of that day."""
    start = int(day_start(days_ago).timestamp() * 1000)
    return [
        make_event(customer_id, timestamp=start + hour * HOUR_MS + i * (HOUR_MS // PER_HOUR))
        for hour in hours
        for i in range(PER_HOUR)
    ]


def business_history(customer_id: str) -> list[dict]:
    """15 days (16 to 2 days ago) of 09:00-17:00 traffic, 80 calls a day:
    every weekday's baseline is learned from at least two days."""
    return [e for days_ago in range(16, 1, -1) for e in events_for(customer_id, days_ago, range(9, 17))]


def post_all(api, customer, events: list[dict]) -> None:
    for i in range(0, len(events), 1000):
        response = api.post("/v1/events", json={"events": events[i : i + 1000]}, headers=customer.headers)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == len(events[i : i + 1000])


def fraud_alerts(api, customer) -> list[dict]:
    response = api.get(
        "/v1/alerts", params={"customer_id": customer.customer_id, "kind": "fraud_pattern"}, headers=customer.headers
    )
    assert response.status_code == 200, response.text
    return response.json()["alerts"]


def test_stolen_key_at_night_raises_one_fraud_alert_everywhere(api, customer, settings, clickhouse):
    history = business_history(customer.customer_id)
    post_all(api, customer, history)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == len(history), what="history")
    assert fraud_alerts(api, customer) == []  # a steady history is not suspicious

    # Yesterday from midnight to 08:00: as many calls as a usual day, at night.
    post_all(api, customer, events_for(customer.customer_id, 1, range(0, 8)))
    alerts = wait_for(lambda: fraud_alerts(api, customer), what="fraud alert")

    # Every request carries bytes, so bandwidth moved to the night as well.
    wait_for(lambda: len(fraud_alerts(api, customer)) == 2, what="one alert per metric")
    by_metric = {a["metric"]: a for a in fraud_alerts(api, customer)}
    assert set(by_metric) == {"api_calls", "bandwidth"}
    alert = by_metric["api_calls"]
    assert alert["severity"] == "critical"
    assert alert["evidence"]["pattern"] == "pattern_shift" and alert["evidence"]["is_fraud"] is True
    assert alert["score"] < 0.9
    assert alert["window"]["start"] == int(day_start(1).timestamp() * 1000)
    assert len(alert["evidence"]["current_vector"]) == 24 and len(alert["evidence"]["baseline_vector"]) == 24

    rows = clickhouse.query(
        "SELECT count() FROM meterflow.alerts FINAL WHERE customer_id = {c:String} AND kind = 'fraud_pattern'",
        parameters={"c": customer.customer_id},
    ).result_rows
    assert rows[0][0] == 2
    published = read_topic(settings, settings.topic_alerts, alert["alert_id"].encode())
    assert published["customer_id"] == customer.customer_id and published["kind"] == "fraud_pattern"


def test_alerts_are_private_to_their_customer(api, customer):
    other = {"X-API-Key": customer.api_key}
    response = api.get("/v1/alerts", params={"customer_id": "someone-else"}, headers=other)
    assert response.status_code == 403
    response = api.get("/v1/alerts", params={"customer_id": customer.customer_id})
    assert response.status_code == 401
    response = api.get("/v1/alerts", params={"customer_id": customer.customer_id, "kind": "x"}, headers=other)
    assert response.status_code == 400


def detector_snapshotted(settings, key: str) -> bool:
    """A committed recovery snapshot of the detector for `key` exists."""
    for part in recovery_dir(settings).glob("part-*.sqlite3"):
        with sqlite3.connect(part) as db:
            found = db.execute(
                "SELECT 1 FROM snaps s JOIN commits c ON s.snap_epoch <= c.commit_epoch "
                "WHERE s.step_id LIKE 'meterflow_events.detect.%' AND s.state_key = ?",
                (key,),
            ).fetchone()
        if found:
            return True
    return False


def backed_up(s3, settings, transaction_ids: set[str], days: set[str]) -> int:
    """How many copies of these events the S3 backup holds."""
    return sum(
        1 for day in days for line in s3_backup_lines(s3, settings, day) if line["transaction_id"] in transaction_ids
    )


def test_detector_state_survives_kill_9(api, customer, stack, settings, clickhouse, s3):
    """The history is learned, snapshotted, then the dataflow is killed. After
    the restart the flow resumes from the snapshot's offsets (the history is
    not read again: the backup holds one copy of it) and the detector still
    knows the customer's weekdays: the stolen key is caught."""
    history = business_history(customer.customer_id)
    post_all(api, customer, history)
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == len(history), what="history")
    wait_for(lambda: detector_snapshotted(settings, f"{customer.customer_id}/api_calls"), what="snapshot")
    # Let the epochs that hold the last history events close too.
    time.sleep(2 * settings.snapshot_interval_s + 1)

    days = {time.strftime("%Y/%m/%d", time.gmtime(e["timestamp"] / 1000)) for e in history}
    ids = {e["transaction_id"] for e in history}
    wait_for(lambda: backed_up(s3, settings, ids, days) == len(history), what="backup of the history")

    os.kill(stack.status()["dataflow"].pid, signal.SIGKILL)
    wait_for(lambda: not stack.status()["dataflow"].running, what="dataflow to die")
    stack.start_service("dataflow")

    post_all(api, customer, events_for(customer.customer_id, 1, range(0, 8)))
    alerts = wait_for(lambda: fraud_alerts(api, customer), timeout_s=60, what="fraud alert after restart")
    assert alerts[0]["evidence"]["is_fraud"] is True
    assert backed_up(s3, settings, ids, days) == len(history)
