"""200k events, the dataflow killed with SIGKILL three times at random points
while it works through them: ClickHouse ends with exactly the generator's
events and sums, and the detectors' recovered state counts each event once."""

from __future__ import annotations

import os
import pickle
import random
import signal
import sqlite3
import time
import uuid

import orjson
from confluent_kafka import Producer

from flows.detectors import DAY_MS, UsageDetector
from flows.run import recovery_dir
from tests.integration.conftest import wait_for

EVENTS = 200_000
CUSTOMERS = 20
KILLS = 3


def generate(prefix: str, rng: random.Random) -> tuple[list[tuple[bytes, bytes]], dict[str, dict[str, int]]]:
    """(key, value) messages and the ground truth per customer: events and bytes."""
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
    return messages, truth


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
    rows = clickhouse.query(
        "SELECT customer_id, uniqExact(transaction_id), count(), sum(toUInt64(properties['bytes'])) "
        "FROM meterflow.events FINAL WHERE startsWith(customer_id, {p:String}) GROUP BY customer_id",
        parameters={"p": prefix + "-"},
    ).result_rows
    return {c: {"distinct": d, "events": n, "bytes": b} for c, d, n, b in rows}


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


def test_three_kills_lose_and_double_count_nothing(stack, settings, clickhouse):
    rng = random.Random(20261123)
    prefix = f"crash-{uuid.uuid4().hex[:8]}"
    messages, truth = generate(prefix, rng)
    produce(settings, messages)

    for _ in range(KILLS):
        time.sleep(rng.uniform(1.0, 4.0))  # a random point of the work
        os.kill(stack.status()["dataflow"].pid, signal.SIGKILL)
        wait_for(lambda: not stack.status()["dataflow"].running, what="dataflow to die")
        stack.start_service("dataflow")

    def all_stored():
        found = stored(clickhouse, prefix)
        return sum(c["distinct"] for c in found.values()) == EVENTS and found

    found = wait_for(all_stored, timeout_s=300, what=f"{EVENTS} events stored")
    assert {c: {"events": v["events"], "bytes": v["bytes"]} for c, v in found.items()} == truth
    assert all(v["distinct"] == v["events"] for v in found.values())

    # The detectors' state went through the same kills: restored from
    # snapshots and replayed, it must count every event exactly once.
    def counted_once(customer: str, metric: str, value: int) -> bool:
        detector = snapshotted_detector(settings, f"{customer}/{metric}")
        return detector is not None and sum(detector.hours) == value

    for customer, expected in truth.items():
        wait_for(lambda: counted_once(customer, "api_calls", expected["events"]), what=f"{customer} calls state")
        wait_for(lambda: counted_once(customer, "bandwidth", expected["bytes"]), what=f"{customer} bytes state")
