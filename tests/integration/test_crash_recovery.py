"""200k events, the dataflow killed with SIGKILL at random points while it
is partway through them, until three restarts have replayed events the
killed process had already stored: ClickHouse (FINAL), `/v1/usage`, the S3
backup and the detectors' recovered state still end with exactly the
generator's events and sums.

The evidence of a replay: a replay is invisible in every total by design
(dedup lets the counted copy through again, ReplacingMergeTree collapses
it, counting reads use FINAL), and ClickHouse's background merges may
collapse the extra rows before a count without FINAL sees them. So the
test compares what the restarted process says it inserted (its
`meterflow_flow_clickhouse_rows` counter, which starts at 0 with the
process) with how many new events appeared in ClickHouse since the kill:
every inserted row beyond the new events is the copy of an event that was
stored already.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx
import orjson
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from flows.detectors import DAY_MS, UsageDetector
from flows.run import recovery_dir
from flows.s3_sink import day_prefix
from meterflow.replay import backup_events
from tests.integration.conftest import wait_for

EVENTS = 200_000
CUSTOMERS = 20
KILLS = 3
# A kill shortly after a recovery snapshot replays nothing, and when the
# snapshot lands cannot be seen from outside. So kill points are tried until
# KILLS of them showed a replay: at most MAX_KILL_POINTS per run of EVENTS,
# and at most ATTEMPTS runs (new events each time) before the test fails.
MAX_KILL_POINTS = 10
ATTEMPTS = 3


@dataclass
class Generated:
    prefix: str
    messages: list[tuple[bytes, bytes]]
    truth: dict[str, dict[str, int]]  # customer -> {"events", "bytes"}
    first_ms: int
    last_ms: int


def generate(rng: random.Random) -> Generated:
    """Messages for CUSTOMERS new customers and the ground truth per customer."""
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    earliest = max(now - 10 * 60_000, now - now % DAY_MS)  # today only, so one detector day holds them all
    truth = {f"{prefix}-{c}": {"events": 0, "bytes": 0} for c in range(CUSTOMERS)}
    messages = []
    for i in range(EVENTS):
        customer = f"{prefix}-{rng.randrange(CUSTOMERS)}"
        size = rng.randrange(1, 10_000)
        event = {
            "transaction_id": f"{prefix}-tx-{i}",
            "customer_id": customer,
            "event_type": "api_request",
            "timestamp": rng.randint(earliest, now),
            "properties": {"bytes": size},
        }
        truth[customer]["events"] += 1
        truth[customer]["bytes"] += size
        messages.append((customer.encode(), orjson.dumps(event)))
    return Generated(prefix, messages, truth, earliest, now)


def produce(settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "linger.ms": 20,
        "queue.buffering.max.messages": 500_000,
    })  # fmt: skip
    for key, value in messages:
        producer.produce(settings.topic_events, value, key=key)
    assert producer.flush(60) == 0


def stored(clickhouse, prefix: str) -> dict[str, dict[str, int]]:
    """Per customer, as every counting read sees it (FINAL)."""
    rows = clickhouse.query(
        "SELECT customer_id, uniqExact(transaction_id), count(), sum(toUInt64(properties['bytes'])) "
        "FROM meterflow.events FINAL WHERE startsWith(customer_id, {p:String}) GROUP BY customer_id",
        parameters={"p": prefix + "-"},
    ).result_rows
    return {c: {"distinct": d, "events": n, "bytes": b} for c, d, n, b in rows}


def stored_distinct(clickhouse, prefix: str) -> int:
    """Distinct events stored so far: the dataflow's progress (no FINAL, so
    it is cheap; replayed rows not merged yet do not count twice)."""
    return clickhouse.query(
        "SELECT uniqExact(transaction_id) FROM meterflow.events WHERE startsWith(customer_id, {p:String})",
        parameters={"p": prefix + "-"},
    ).result_rows[0][0]


def stored_everywhere(clickhouse) -> int:
    """Distinct events of every customer, for comparing with the dataflow's
    row counter, which counts every customer's rows."""
    return clickhouse.query("SELECT uniqExact(customer_id, transaction_id) FROM meterflow.events").result_rows[0][0]


def rows_inserted(settings) -> int:
    """The running dataflow process's `meterflow_flow_clickhouse_rows` (0
    while it does not serve its metrics yet): rows it inserted, counted
    after each insert succeeded."""
    try:
        text = httpx.get(f"http://{settings.flow_metrics_host}:{settings.flow_metrics_port}/metrics", timeout=5).text
    except httpx.TransportError:
        return 0
    for family in text_string_to_metric_families(text):
        if family.name == "meterflow_flow_clickhouse_rows":
            return int(sum(s.value for s in family.samples if s.name.endswith("_total")))
    return 0


def kill_after(stack, clickhouse, generated: Generated, at: int) -> tuple[int, int]:
    """SIGKILL the dataflow as soon as `at` distinct events are stored, start
    it again, and return how many were stored when it died: of this run, and
    of every customer.

    Polled without pause (one query takes milliseconds), so the kill lands
    right after the insert that crossed `at`, most often before the recovery
    snapshot that covers it: the kill that forces a replay.
    """
    pid = stack.status()["dataflow"].pid
    deadline = time.monotonic() + 120  # only bounds a failing test
    while stored_distinct(clickhouse, generated.prefix) < at:
        assert time.monotonic() < deadline, f"timed out waiting for {at} events stored"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not stack.status()["dataflow"].running, what="dataflow to die")
    counts = stored_distinct(clickhouse, generated.prefix), stored_everywhere(clickhouse)
    stack.start_service("dataflow")
    return counts


def replayed_after(settings, clickhouse, generated: Generated, all_at_death: int) -> int:
    """Rows the restarted process inserted again for events already stored
    when its predecessor died (a lower bound), as soon as it shows some; 0
    once it inserted a full poll per partition, or stored everything,
    without showing any (a replay comes first in its partition).

    Its rows are either new events (at most the growth of distinct events,
    read after the counter, so the bound errs low) or copies of events that
    were stored already: replays.
    """
    enough = settings.flow_batch_size * settings.topic_partitions

    def shown() -> tuple[int] | None:
        rows = rows_inserted(settings)
        replayed = rows - (stored_everywhere(clickhouse) - all_at_death)
        if replayed > 0:
            return (replayed,)
        return (0,) if rows >= enough or stored_distinct(clickhouse, generated.prefix) == EVENTS else None

    return wait_for(shown, timeout_s=120, what="the restarted dataflow to replay or move on")[0]


def run_with_kills(stack, settings, clickhouse, rng: random.Random) -> tuple[Generated, list[tuple[int, int]]]:
    """Produce a fresh set of events and kill the dataflow at random points
    while it stores them, until KILLS restarts showed a replay (or the events
    or MAX_KILL_POINTS run out). Returns (stored at the kill, rows replayed)
    for each kill that showed one."""
    generated = generate(rng)
    produce(settings, generated.messages)
    replays: list[tuple[int, int]] = []
    progress = 0
    for _ in range(MAX_KILL_POINTS):
        at = progress + rng.randint(1, EVENTS // 8)
        if at > EVENTS * 0.9 or len(replays) == KILLS:
            break
        at_death, all_at_death = kill_after(stack, clickhouse, generated, at)
        if at_death == EVENTS:
            break  # the dataflow outran the kill: not partway, no more points left
        replayed = replayed_after(settings, clickhouse, generated, all_at_death)
        print(f"kill at {at_death} of {EVENTS} stored: at least {replayed} rows replayed")
        if replayed:
            replays.append((at_death, replayed))
        progress = stored_distinct(clickhouse, generated.prefix)
    return generated, replays


def backup_copies(s3, settings, generated: Generated) -> Counter[str]:
    """transaction_id -> lines in the S3 backup of the days of the events."""
    days = {day_prefix(generated.first_ms), day_prefix(generated.last_ms)}
    keys = [
        obj.object_name
        for day in days
        for obj in s3.list_objects(settings.s3_bucket, prefix=f"events/{day}/", recursive=True)
    ]
    return Counter(
        line["transaction_id"]
        for key in keys
        for line in backup_events(s3, settings.s3_bucket, key)
        if line["customer_id"].startswith(generated.prefix + "-")
    )


def snapshotted_detector(settings, key: str) -> UsageDetector | None:
    """The detector for `key` as of the newest committed recovery snapshot."""
    for part in recovery_dir(settings).glob("part-*.sqlite3"):
        with sqlite3.connect(part) as db:
            row = db.execute(
                "SELECT s.ser_change FROM snaps s JOIN commits c ON s.snap_epoch <= c.commit_epoch "
                "WHERE s.step_id LIKE 'meterflow_events.detect.%' AND s.state_key = ? "
                "ORDER BY s.snap_epoch DESC LIMIT 1",
                (key,),
            ).fetchone()
        if row and row[0] is not None:
            return pickle.loads(row[0])
    return None



def test_three_kills_partway_replay_and_lose_or_double_count_nothing(stack, settings, clickhouse, s3, api):
    rng = random.Random(20261123)
    for attempt in range(1, ATTEMPTS + 1):
        generated, replays = run_with_kills(stack, settings, clickhouse, rng)

        def all_stored():
            found = stored(clickhouse, generated.prefix)
            return sum(c["distinct"] for c in found.values()) == EVENTS and found

        found = wait_for(all_stored, timeout_s=300, what=f"{EVENTS} events stored")
        # Nothing lost, nothing counted twice, replays or not: ClickHouse as
        # every counting read sees it.
        assert {c: {"events": v["events"], "bytes": v["bytes"]} for c, v in found.items()} == generated.truth
        assert all(v["distinct"] == v["events"] for v in found.values())
        if len(replays) == KILLS:
            break
        print(f"attempt {attempt}: {len(replays)} of {KILLS} kills showed a replay; again with new events")
    else:
        raise AssertionError(f"no run of {ATTEMPTS} showed a replay after {KILLS} kills (last: {replays})")

    # The backup holds every event, and after a kill some of them more than
    # once (readers key on transaction_id).
    def backed_up():
        copies = backup_copies(s3, settings, generated)
        return len(copies) == EVENTS and copies

    wait_for(backed_up, what="every event in the S3 backup")

    # /v1/usage, which customers and invoices read, says the same as FINAL.
    window = {"start": generated.first_ms, "end": generated.last_ms}
    for customer_id, expected in generated.truth.items():
        created = api.post("/v1/admin/keys", json={"customer_id": customer_id, "name": "crash"})
        assert created.status_code == 201, created.text
        for metric, value in (("api_calls", expected["events"]), ("bandwidth", expected["bytes"])):
            response = api.get(
                "/v1/usage",
                params={"customer_id": customer_id, "metric": metric, **window},
                headers={"X-API-Key": created.json()["api_key"]},
            )
            assert response.status_code == 200, response.text
            assert response.json()["value"] == value, (customer_id, metric)

    # The detectors' state went through the same kills: restored from
    # snapshots and replayed, it must count every event exactly once.
    def counted_once(customer: str, metric: str, value: int) -> bool:
        detector = snapshotted_detector(settings, f"{customer}/{metric}")
        return detector is not None and sum(detector.hours) == value

    for customer, expected in generated.truth.items():
        wait_for(lambda: counted_once(customer, "api_calls", expected["events"]), what=f"{customer} calls state")
        wait_for(lambda: counted_once(customer, "bandwidth", expected["bytes"]), what=f"{customer} bytes state")
