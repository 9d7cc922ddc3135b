"""GET /v1/usage latency over many stored events, with and without group_by.

    .venv/bin/python benchmarks/query.py [--events 10000000] [--customers 1000] [--requests 200]

A private system (services + API, no dataflow); ClickHouse generates the
events itself (`INSERT ... SELECT FROM numbers(N)`: 30 days, `--customers`
customers, api_request events with bytes/endpoint/region), so filling 10M
rows takes seconds, not an hour of ingest. Then, for random customers,
times `/v1/usage` end to end (HTTP, auth, rate limit, FINAL query) for
`api_calls` (COUNT), `bandwidth` (SUM) and `bandwidth` grouped by region.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import httpx
from tqdm import tqdm

from common import percentile, private_system, report  # noqa: I001 - benchmarks run as scripts
from meterflow.clients import clickhouse_client

DAY_MS = 86_400_000

GENERATE = """
INSERT INTO `{db}`.events (transaction_id, customer_id, event_type, timestamp, properties)
SELECT
    concat('q-', toString(number)),
    concat('bench-', leftPad(toString(number % {{customers:UInt32}}), 5, '0')),
    'api_request',
    fromUnixTimestamp64Milli(toInt64({{start:Int64}} + intDiv(number * {{span:Int64}}, {{events:UInt64}}))),
    map('bytes', toString(number % 4096), 'endpoint', '/v1/things', 'region', ['eu', 'us', 'ap'][number % 3 + 1])
FROM numbers({{events:UInt64}})
"""  # sql-ok: the database name comes from configuration

QUERIES = {
    "api_calls": {"metric": "api_calls"},
    "bandwidth": {"metric": "bandwidth"},
    "bandwidth by region": {"metric": "bandwidth", "group_by": "region"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200, help="per query kind")
    args = parser.parse_args()
    end = int(time.time() * 1000)
    start = end - 30 * DAY_MS

    rows = []
    with private_system(start=["api"], rate_limit_requests=10**9) as (_, settings):
        ch = clickhouse_client(settings)
        filled = time.monotonic()
        ch.command(
            GENERATE.format(db=settings.clickhouse_database),
            parameters={"customers": args.customers, "start": start, "span": end - start, "events": args.events},
        )
        fill_s = time.monotonic() - filled
        stored = ch.query(f"SELECT count() FROM `{settings.clickhouse_database}`.events").result_rows[0][0]  # sql-ok
        print(f"stored {stored:,} events in {fill_s:.1f} s", file=sys.stderr)

        api = httpx.Client(base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=60)
        keys: dict[str, str] = {}
        rng = random.Random(7)
        for name, params in QUERIES.items():
            latencies = []
            for _ in tqdm(range(args.requests), desc=name, file=sys.stderr):
                customer = f"bench-{rng.randrange(args.customers):05d}"
                if customer not in keys:
                    created = api.post("/v1/admin/keys", json={"customer_id": customer, "name": "query"})
                    keys[customer] = created.json()["api_key"]
                sent = time.perf_counter()
                response = api.get(
                    "/v1/usage",
                    params={"customer_id": customer, "start": start, "end": end, **params},
                    headers={"X-API-Key": keys[customer]},
                )
                latencies.append((time.perf_counter() - sent) * 1000)
                if response.status_code != 200:
                    print(f"{name}: {response.status_code} {response.text[:200]}", file=sys.stderr)
                    return 1
            rows.append({
                "query": name,
                "requests": args.requests,
                "p50_ms": round(statistics.median(latencies), 1),
                "p95_ms": round(percentile(latencies, 0.95), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
                "max_ms": round(max(latencies), 1),
            })  # fmt: skip
    report("query", {"events": stored, "customers": args.customers, "period_days": 30, "fill_s": round(fill_s, 1)},
           ["query", "requests", "p50_ms", "p95_ms", "p99_ms", "max_ms"], rows)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
