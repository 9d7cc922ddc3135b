"""A backlog of millions of messages on one partition through the native
stack (Tansu storing its log in SeaweedFS), read by the real dataflow.

    .venv/bin/python benchmarks/backlog.py [--events 3000000] [--fetch-wait-ms MS]

Issue 12: with the old 50 ms fetch wait, the dataflow stopped for good at
offset 2,467,606 of partition 0, the broker answering every fetch empty
because reading that part of its log from S3 took longer than the wait.
This fills one partition with `--events` valid events, starts the dataflow
(`python -m flows.run`, FLOW_FETCH_WAIT_MS from `--fetch-wait-ms`, default
the setting's default) and follows it through its /health once a second
until every event is a row in ClickHouse, or until it has made no progress
for `--give-up-s` seconds. It prints the fill and drain rates, the longest
time the partition had a backlog and did not move, whether the dataflow
reported a stall, and whether it crossed the old stall point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any

from tqdm import tqdm

from common import fill_topic, private_system, report  # noqa: I001 - benchmarks run as scripts
from meterflow.clients import clickhouse_client
from meterflow.settings import Settings

OLD_STALL_OFFSET = 2_467_606


def flow_health(settings: Settings) -> dict[str, Any] | None:
    url = f"http://{settings.flow_metrics_host}:{settings.flow_metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except OSError:
        return None  # not serving yet, or a slow answer: the next sample tells


def follow(stack, settings: Settings, expected: int, give_up_s: float) -> dict[str, Any]:
    """Start the dataflow and sample its progress until `expected` rows are stored."""
    ch = clickhouse_client(settings)
    table = f"`{settings.clickhouse_database}`.events"
    started = time.monotonic()
    stack.start_service("dataflow")
    offset, moved_at, longest_still, stalled_seen, count = -1, time.monotonic(), 0.0, False, 0
    with tqdm(total=expected, desc="dataflow", unit="ev", unit_scale=True, file=sys.stderr) as bar:
        while count < expected:
            time.sleep(1.0)
            now = time.monotonic()
            health = flow_health(settings)
            if health and health["partitions"]:
                part = health["partitions"][0]
                stalled_seen |= bool(health["stalled"])
                if part["next_offset"] != offset:
                    offset, moved_at = part["next_offset"], now
                elif part["lag"]:
                    longest_still = max(longest_still, now - moved_at)
            stored = ch.query(f"SELECT count() FROM {table}").result_rows[0][0]  # sql-ok
            bar.update(stored - count)
            count = stored
            if now - moved_at > give_up_s:
                print(f"no progress for {give_up_s:.0f} s at offset {offset}: giving up", file=sys.stderr)
                break
    seconds = time.monotonic() - started
    return {
        "events": expected,
        "stored": count,
        "drain_s": round(seconds, 1),
        "events_per_s": round(count / seconds),
        "last_offset": offset,
        "crossed_old_stall_point": offset > OLD_STALL_OFFSET,
        "longest_no_progress_s": round(longest_still, 1),
        "stall_reported": stalled_seen,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--fetch-wait-ms", type=int, default=Settings().flow_fetch_wait_ms,
                        help="FLOW_FETCH_WAIT_MS of the dataflow (the old value was 50)")
    parser.add_argument("--give-up-s", type=float, default=120.0, help="stop after this long without progress")
    args = parser.parse_args()
    overrides = {"topic_partitions": 1, "flow_fetch_wait_ms": args.fetch_wait_ms, "flow_stall_after_s": 30.0}
    with private_system(start=[], kafka_storage="s3", **overrides) as (stack, settings):
        started = time.monotonic()
        size = fill_topic(settings, args.events)
        fill_s = time.monotonic() - started
        row = follow(stack, settings, args.events, args.give_up_s)
    row = {"fill_s": round(fill_s, 1), "fill_per_s": round(args.events / fill_s), **row}
    report(
        "backlog",
        {"events": args.events, "bytes": size, "partitions": 1, "broker_log": "s3",
         "fetch_wait_ms": args.fetch_wait_ms, "batch": settings.flow_batch_size},
        list(row),
        [row],
    )
    return 0 if row["stored"] == args.events else 1


if __name__ == "__main__":
    sys.exit(main())
