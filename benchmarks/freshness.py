"""Freshness at low load: time from the API's 200 to the event being in ClickHouse.

    .venv/bin/python benchmarks/freshness.py [--requests 200] [--rate 10]

Starts a private local system (the same Stack as `meterflow up`, on free
ports in a temporary directory), creates a key, then posts one event per
request at `--rate` requests/s. After each 200 it polls ClickHouse
(`SELECT count() ... FINAL WHERE transaction_id = ...`, every 10 ms) until
the row is there. Prints the machine, the configuration, p50/p90/p99/max and
one JSON line. The throughput benchmarks of the pipeline live in the
throughput issue; this one checks the "queryable within about a second"
promise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meterflow.clients import clickhouse_client  # noqa: E402
from meterflow.local import local_stack  # noqa: E402
from meterflow.settings import Settings  # noqa: E402
from meterflow.stack import StackConfig, free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mf-fresh-") as tmp:
        config = StackConfig.ephemeral(Path(tmp))
        settings = config.settings(Settings(api_port=free_port(), data_dir=config.data_dir, log_level="WARNING"))
        stack = local_stack(config, settings)
        stack.start()
        try:
            ch = clickhouse_client(settings)
            api = httpx.Client(base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=30)
            key = api.post("/v1/admin/keys", json={"customer_id": "bench", "name": "fresh"}).json()["api_key"]
            delays: list[float] = []
            interval = 1.0 / args.rate
            for i in range(args.requests):
                started = time.monotonic()
                tid = f"fresh-{uuid.uuid4().hex}"
                event = {"transaction_id": tid, "customer_id": "bench", "event_type": "api_request",
                         "timestamp": int(time.time() * 1000), "properties": {"bytes": 1}}  # fmt: skip
                response = api.post("/v1/events", json={"events": [event]}, headers={"X-API-Key": key})
                assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
                answered = time.monotonic()
                while not ch.query(
                    "SELECT count() FROM meterflow.events FINAL WHERE customer_id = 'bench' "
                    "AND transaction_id = {t:String}",
                    parameters={"t": tid},
                ).result_rows[0][0]:
                    time.sleep(0.01)
                delays.append(time.monotonic() - answered)
                print(f"\r{i + 1}/{args.requests} events", end="", file=sys.stderr, flush=True)
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
            print(file=sys.stderr)
        finally:
            stack.stop()

    ms = [d * 1000 for d in delays]
    result = {
        "benchmark": "freshness",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "python": platform.python_version(),
        "requests": args.requests,
        "rate_per_s": args.rate,
        "ms": {
            "p50": round(statistics.median(ms), 1),
            "p90": round(percentile(ms, 0.90), 1),
            "p99": round(percentile(ms, 0.99), 1),
            "max": round(max(ms), 1),
        },
    }
    print(f"freshness (API 200 -> row in ClickHouse), {args.requests} single-event requests at {args.rate}/s")
    print(f"machine: {result['machine']}, Python {result['python']}")
    print("  p50 {p50} ms   p90 {p90} ms   p99 {p99} ms   max {max} ms".format(**result["ms"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
