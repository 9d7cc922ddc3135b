"""Sustained ingest through POST /v1/events: events/s and request latency.

    .venv/bin/python benchmarks/ingest_api.py [--clients 4] [--requests 400] [--batch 1000]

A private system (services, dataflow, API) with the rate limit lifted; one
customer and key per client. The request bodies (unique transaction ids)
are generated and serialised before the clock starts, then `--clients`
threads post them as fast as the API answers, each with its own HTTP
connection. Every request must answer 200 with all events accepted.
Prints events/s over the whole run, per-request latency p50/p95/p99, and
the API processes' CPU time per event (user + system, uvicorn workers
included), the figure that holds on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
from tqdm import tqdm

from common import Profiler, cpu_seconds, hot_frames, make_event, percentile, private_system, report  # noqa: I001 - benchmarks run as scripts


def bodies_for(customer_id: str, count: int, batch: int) -> list[bytes]:
    now = int(time.time() * 1000)
    return [
        orjson.dumps({"events": [make_event(customer_id, now - i, i) for i in range(batch)]})
        for _ in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="in total, split over the clients")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--profile", type=Path, help="py-spy samples of the API to PATH; prints the hottest frames")
    args = parser.parse_args()
    per_client = args.requests // args.clients

    with private_system(rate_limit_requests=10**9, api_workers=args.api_workers) as (stack, settings):
        base = f"http://{settings.api_host}:{settings.api_port}"
        keys = []
        with httpx.Client(base_url=base) as admin:
            for c in range(args.clients):
                created = admin.post("/v1/admin/keys", json={"customer_id": f"ingest-{c}", "name": "bench"})
                keys.append(created.json()["api_key"])
        work = [bodies_for(f"ingest-{c}", per_client, args.batch) for c in tqdm(range(args.clients), desc="bodies")]
        latencies: list[float] = []
        failures: list[str] = []
        bar = tqdm(total=per_client * args.clients * args.batch, desc="ingest", unit="ev", unit_scale=True)
        lock = threading.Lock()

        def client(index: int) -> None:
            headers = {"X-API-Key": keys[index], "Content-Type": "application/json"}
            with httpx.Client(base_url=base, timeout=60) as http:
                for body in work[index]:
                    sent = time.perf_counter()
                    response = http.post("/v1/events", content=body, headers=headers)
                    took = time.perf_counter() - sent
                    ok = response.status_code == 200 and response.json()["accepted"] == args.batch
                    with lock:
                        latencies.append(took)
                        bar.update(args.batch)
                        if not ok:
                            failures.append(f"{response.status_code} {response.text[:200]}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        api_pid = stack.status()["api"].pid
        profiler = Profiler(api_pid, args.profile) if args.profile else None
        started, started_cpu = time.perf_counter(), cpu_seconds([api_pid])
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        cpu = cpu_seconds([api_pid]) - started_cpu
        bar.close()
        if profiler is not None:
            profiler.stop()
            for share, frame in hot_frames(args.profile):
                print(f"{share:5.1f}%  {frame}", file=sys.stderr)

    if failures:
        print(f"{len(failures)} requests failed, e.g. {failures[0]}", file=sys.stderr)
        return 1
    ms = [x * 1000 for x in latencies]
    events = len(latencies) * args.batch
    row = {
        "clients": args.clients,
        "requests": len(latencies),
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "cpu_us_per_event": round(cpu * 1e6 / events, 1),
    }
    report("ingest_api", {"batch": args.batch, "clients": args.clients, "api_workers": args.api_workers,
                          "partitions": settings.topic_partitions},
           list(row), [row])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
