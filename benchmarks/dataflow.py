"""Sustained dataflow throughput from a pre-filled events.raw, against the bare copy.

    .venv/bin/python benchmarks/dataflow.py [--events 1000000] [--workers 1 2]

For each worker count, a fresh private system: fill `events.raw` with
`--events` valid events (1000 customers, keyed like the API), run
benchmarks/baseline_copy.py's bare consumer + columnar insert over the same
messages, then start the real dataflow (`python -m flows.run`: decode,
validate, Redis dedup, ClickHouse, S3 backup, detectors, recovery
snapshots) and time it until every event is a row in ClickHouse. With
`--processes N ...`, the same for a Bytewax cluster of N processes
(`python -m flows.run -i K -a ...`, one worker each).
"events/s" counts from the first stored row to the last (steady state);
"with start" includes the process start and the storage checks.
"cpu µs/event" is the dataflow processes' own CPU time (user + system, all
threads, librdkafka's included) over the same steady-state span, divided by
the events stored in it: unlike events/s it holds on a machine shared with
other work, so it is the figure to compare changes by.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from baseline_copy import copy  # noqa: I001 - benchmarks run as scripts
from common import Profiler, cpu_seconds, fill_topic, hot_frames, private_system, report
from meterflow.stack import free_port
from meterflow.clients import clickhouse_client
from meterflow.settings import Settings


def stored(ch, settings: Settings) -> int:
    return ch.query(f"SELECT count() FROM `{settings.clickhouse_database}`.events").result_rows[0][0]  # sql-ok


def start_cluster(settings: Settings, processes: int) -> list[subprocess.Popen]:
    """`processes` dataflow processes of one Bytewax cluster (-i/-a), one worker each."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**os.environ, **settings.as_env()}
    return [
        subprocess.Popen([sys.executable, "-m", "flows.run", "-i", str(i), "-a", addresses], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for i in range(processes)
    ]


def run_cluster(settings: Settings, expected: int, processes: int) -> dict[str, Any]:
    started = time.monotonic()
    cluster = start_cluster(settings, processes)
    try:
        return measure(settings, expected, f"dataflow p={processes} (-i/-a)", started, [p.pid for p in cluster])
    finally:
        for process in cluster:
            process.terminate()
        for process in cluster:
            process.wait(30)


def run_dataflow(stack, settings: Settings, expected: int, profile_to: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    stack.start_service("dataflow")
    profiler = Profiler(stack.status()["dataflow"].pid, profile_to) if profile_to else None
    pid = stack.status()["dataflow"].pid
    row = measure(settings, expected, f"dataflow w={settings.flow_workers}", started, [pid])
    if profiler is not None:
        profiler.stop()
        for share, frame in hot_frames(profile_to):
            print(f"{share:5.1f}%  {frame}", file=sys.stderr)
    return row


def measure(settings: Settings, expected: int, label: str, started: float, pids: list[int]) -> dict[str, Any]:
    """Waits until `expected` rows are stored; the figures of `label` since
    `started`, and the CPU time the processes `pids` spent per stored event."""
    ch = clickhouse_client(settings)
    first_at = None
    count = 0
    with tqdm(total=expected, desc=label, unit="ev", unit_scale=True, file=sys.stderr) as bar:
        while count < expected:
            time.sleep(0.2)
            now = stored(ch, settings)
            if now and first_at is None:
                first_at, first_count, first_cpu = time.monotonic(), now, cpu_seconds(pids)
            bar.update(now - count)
            count = now
    done = time.monotonic()
    cpu = cpu_seconds(pids) - first_cpu if first_at else cpu_seconds(pids)
    steady = done - first_at if first_at and done > first_at else done - started
    return {
        "pipeline": label,
        "events": expected,
        "seconds": round(done - started, 2),
        "events_per_s": round((expected - first_count) / steady) if first_at else round(expected / steady),
        "with_start_per_s": round(expected / (done - started)),
        "cpu_us_per_event": round(cpu * 1e6 / ((expected - first_count) if first_at else expected), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--processes", type=int, nargs="*", default=[],
                        help="also run clusters of this many processes (-i/-a, one worker each)")
    parser.add_argument("--kafka-storage", choices=["s3", "memory"], default="s3", help="the private broker's log")
    parser.add_argument("--profile", type=Path, help="py-spy samples of the dataflow to PATH-w<N>.txt; prints the hottest frames")
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        with private_system(start=[], kafka_storage=args.kafka_storage, flow_workers=workers) as (stack, settings):
            fill_topic(settings, args.events)
            baseline = copy(settings, args.events)
            profile_to = args.profile.with_name(f"{args.profile.stem}-w{workers}.txt") if args.profile else None
            flow = run_dataflow(stack, settings, args.events, profile_to)
            flow["ratio_to_baseline"] = round(flow["events_per_s"] / baseline["events_per_s"], 2)
            rows += [baseline, flow]
    for processes in args.processes:
        with private_system(start=[], kafka_storage=args.kafka_storage) as (stack, settings):
            fill_topic(settings, args.events)
            baseline = copy(settings, args.events)
            flow = run_cluster(settings, args.events, processes)
            flow["ratio_to_baseline"] = round(flow["events_per_s"] / baseline["events_per_s"], 2)
            rows += [baseline, flow]
    report(
        "dataflow",
        {"events": args.events, "partitions": settings.topic_partitions, "batch": settings.flow_batch_size,
         "broker_log": args.kafka_storage},
        ["pipeline", "events", "seconds", "events_per_s", "with_start_per_s", "cpu_us_per_event", "ratio_to_baseline"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
