"""Freshness under load: time from the API's 200 to the event counting in /v1/usage.

    .venv/bin/python benchmarks/freshness.py [--load 10000 ...] [--probes 200] [--probe-rate 5]

A private system (services, dataflow, API) with the rate limit lifted.
A background client offers `--load` events/s through POST /v1/events
(batches of 1000 from 4 customers, paced per second; if the API cannot
keep up the achieved rate is reported). Meanwhile a probe customer posts
one event at a time (`--probe-rate` per second); after each 200 the probe
polls GET /v1/usage (api_calls, COUNT) every 10 ms until its count includes
the event. Prints p50/p90/p99/max of that delay and the load achieved, one
row per `--load` value (in one system, in the order given); `--load 0`
measures an idle system.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import httpx
import orjson
from tqdm import tqdm

from common import make_event, percentile, private_system, report  # noqa: I001 - benchmarks run as scripts

BATCH = 1000
LOAD_CUSTOMERS = 4


def offer_load(base: str, keys: list[str], rate: int, stop: threading.Event, sent: list[int]) -> None:
    """Post `rate` events/s in batches of BATCH until `stop`; counts what was accepted."""
    if rate <= 0:
        return
    per_second = max(1, rate // BATCH)
    with httpx.Client(base_url=base, timeout=60) as http:
        i = 0
        while not stop.is_set():
            second = time.monotonic()
            for _ in range(per_second):
                customer = i % LOAD_CUSTOMERS
                now = int(time.time() * 1000)
                body = orjson.dumps({"events": [make_event(f"load-{customer}", now, n) for n in range(BATCH)]})
                response = http.post("/v1/events", content=body,
                                     headers={"X-API-Key": keys[customer], "Content-Type": "application/json"})  # fmt: skip
                if response.status_code == 200:
                    sent[0] += response.json()["accepted"]
                i += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - second)))


def measure(api: httpx.Client, base: str, probe_headers: dict, load_keys: list[str], load: int, args) -> dict:
    """Probe delays while `load` events/s are offered."""
    stop = threading.Event()
    sent = [0]
    loader = threading.Thread(target=offer_load, args=(base, load_keys, load, stop, sent))
    loader.start()
    load_started = time.monotonic()
    time.sleep(3)  # let the load reach a steady state first
    window_start = int(time.time() * 1000) - 3_600_000
    baseline = probe_count(api, probe_headers, window_start)
    delays: list[float] = []
    interval = 1.0 / args.probe_rate
    try:
        for i in tqdm(range(args.probes), desc=f"probes at {load}/s", file=sys.stderr):
            started = time.monotonic()
            event = make_event("probe", int(time.time() * 1000), i)
            response = api.post("/v1/events", json={"events": [event]}, headers=probe_headers)
            assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
            answered = time.monotonic()
            while probe_count(api, probe_headers, window_start) < baseline + i + 1:
                time.sleep(0.01)
            delays.append((time.monotonic() - answered) * 1000)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        stop.set()
        loader.join()
    return {
        "offered_per_s": load,
        "achieved_per_s": round(sent[0] / (time.monotonic() - load_started)),
        "probes": len(delays),
        "p50_ms": round(statistics.median(delays), 1),
        "p90_ms": round(percentile(delays, 0.90), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
    }


def probe_count(api: httpx.Client, headers: dict, window_start: int) -> int:
    usage = api.get("/v1/usage", headers=headers, params={
        "customer_id": "probe", "metric": "api_calls", "start": window_start, "end": int(time.time() * 1000) + 60_000,
    })  # fmt: skip
    return usage.json()["value"] if usage.status_code == 200 else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, nargs="+", default=[10_000], help="offered events/s besides the probes")
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--probe-rate", type=float, default=5.0, help="probe events per second")
    args = parser.parse_args()

    with private_system(rate_limit_requests=10**9) as (_, settings):
        base = f"http://{settings.api_host}:{settings.api_port}"
        api = httpx.Client(base_url=base, timeout=30)

        def key_for(customer: str) -> str:
            return api.post("/v1/admin/keys", json={"customer_id": customer, "name": "fresh"}).json()["api_key"]

        probe_headers = {"X-API-Key": key_for("probe")}
        load_keys = [key_for(f"load-{c}") for c in range(LOAD_CUSTOMERS)]
        rows = [measure(api, base, probe_headers, load_keys, load, args) for load in args.load]
    report("freshness", {"probe_rate_per_s": args.probe_rate, "batch": BATCH}, list(rows[0]), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
