"""CPU time per event of each dataflow step, in this process, without Bytewax.

    .venv/bin/python benchmarks/flow_steps.py [--events 200000] [--batch 1000] [--repeat 3]

Builds `--events` Kafka messages like the API produces (1000 customers,
`api_request` events with bytes/endpoint/region, an ingest id header),
then pushes them `--batch` at a time through the dataflow's own step
functions: decode + validate, Redis dedup (a private redis-server on a free
port, emptied before each round), the ClickHouse columns, the S3 NDJSON
objects, the hourly observations and the detectors, and a recovery
snapshot of the changed detectors every `--snapshot-every` batches (a
deep copy and a pickle per changed detector, as Bytewax does). Nothing is sent to
ClickHouse, S3 or Kafka: the sinks' own CPU is what builds their payload.

Prints CPU µs per event of each step (time.process_time, the best of
`--repeat` rounds), which holds on a machine shared with other work where
events/s does not. What it leaves out (Bytewax's own loop, items crossing
steps, librdkafka, the network) is what benchmarks/dataflow.py's
"cpu µs/event" adds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pickle
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from common import make_event, report  # noqa: I001 - benchmarks run as scripts
from flows.clickhouse_sink import event_columns
from flows.events import Deduplicator, Detect, decode_batch, is_event_batch, keyed_observations
from flows.s3_sink import backup_objects
from meterflow.clients import redis_client
from meterflow.settings import Settings
from meterflow.stack import free_port
from operators.dedup import INGEST_ID_HEADER


def messages(count: int, customers: int = 1000) -> list[Message]:
    """`count` valid events over the last hour, keyed and headed like the API's."""
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        customer = f"bench-{i % customers:05d}"
        event = make_event(customer, now - 3_600_000 + (i * 3_600_000) // count, i)
        out.append(
            Message(
                key=customer.encode(), value=orjson.dumps(event), topic="events.raw",
                headers=[(INGEST_ID_HEADER, f"bench-{i}".encode())], partition=i % 4, offset=i // 4,
                timestamp=(TIMESTAMP_CREATE_TIME, now),
            )
        )  # fmt: skip
    return out


class Clock:
    """CPU seconds per step name, added up over a round."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def time(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.process_time()
        result = fn(*args)
        self.seconds[step] += time.process_time() - start
        return result


def one_round(batches: list[list[Message]], settings: Settings, snapshot_every: int) -> Clock:
    clock = Clock()
    dedup = Deduplicator(settings)
    detect = Detect(settings)
    states: dict[str, Any] = {}
    changed: set[str] = set()
    for n, batch in enumerate(batches, 1):
        decoded = clock.time("decode", decode_batch, batch)
        (valid,) = [item for item in decoded if is_event_batch(item)]
        unique = clock.time("dedup", dedup, valid)
        clock.time("clickhouse columns", event_columns, [unique])
        clock.time("s3 objects", backup_objects, [unique], 0)
        observations = clock.time("observe", keyed_observations, unique)

        def run_detectors() -> None:
            for key, obs in observations:
                states[key], _ = detect(states.get(key), obs)
                changed.add(key)

        clock.time("detect", run_detectors)
        if n % snapshot_every == 0:
            clock.time("snapshot", lambda: [pickle.dumps(copy.deepcopy(states[key])) for key in changed])
            changed.clear()
    return clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="messages per step call (FLOW_BATCH_SIZE)")
    parser.add_argument("--snapshot-every", type=int, default=20, help="batches between recovery snapshots")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    msgs = messages(args.events)
    batches = [msgs[i : i + args.batch] for i in range(0, len(msgs), args.batch)]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mf-steps-") as tmp:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            settings = dataclasses.replace(Settings.from_env(), redis_url=f"redis://127.0.0.1:{port}/0")
            client = redis_client(settings)
            while True:
                try:
                    client.ping()
                    break
                except Exception:
                    time.sleep(0.05)
            rounds = []
            for _ in range(args.repeat):
                client.flushall()
                rounds.append(one_round(batches, settings, args.snapshot_every).seconds)
        finally:
            redis.terminate()
            redis.wait(10)
    steps = list(rounds[0])
    rows = [
        {"step": step, "cpu_us_per_event": round(min(r[step] for r in rounds) * 1e6 / args.events, 2)}
        for step in steps
    ]
    rows.append({"step": "total", "cpu_us_per_event": round(min(sum(r.values()) for r in rounds) * 1e6 / args.events, 2)})
    report("flow_steps", {"events": args.events, "batch": args.batch, "snapshot_every": args.snapshot_every,
                          "repeat": args.repeat}, ["step", "cpu_us_per_event"], rows)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
