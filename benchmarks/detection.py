"""Detection quality: precision, recall and delay of the streaming detectors on a labelled month.

    .venv/bin/python benchmarks/detection.py [--customers 1000] [--events-per-day 100] [--seed 42]
        [--populations office,247,batch,tiny,large,growth,holiday] (default office; NAME:WEIGHT)
        [--fraud-share 0.1] [--spike-share 0.1] [--spike-factor 20 | LOW HIGH] [--background-share 0]
        [--stack private|running] [--kafka-storage memory|s3] [--flow-batch-size 1000]
        [--settle-s 15] [--timeout-s 3600]
        [--save alerts.jsonl]

1. Generates a labelled month with `meterflow.simulate.labelled_month`:
   traffic of `--customers` customers of the `--populations` mix (office
   hours by default) over the local days D-28 .. D-3, with stolen-key
   nights (fraud) and one-hour spikes injected on known customers and days
   of every population, and benign look-alikes labelled (holidays, nightly
   batches run late) (docs/simulation.md).
2. Produces it to Kafka `events.raw` in time order, the simulator's Kafka
   path (`meterflow.sender`), into a private system (default: the whole
   stack on free ports in a temporary directory, the broker's log in
   memory: `--kafka-storage`) or the running one
   configured by the environment (`--stack running`; customers then get a
   fresh prefix so earlier runs do not interfere).
3. Waits until every event is a row in ClickHouse and the `alerts` table
   has stopped growing for `--settle-s`, then reads `alerts FINAL`.
4. Scores findings against the labels. A finding is one (customer, kind,
   window) whatever the metric or severity that reported it; it is true
   when it is about an injected incident's customer, its window overlaps
   the incident's window and it was raised after the incident's first
   event. Findings about the first two weeks (before a day ahead of the
   earliest possible incident) are the detectors' warm-up, counted apart:
   a live system learned long before. Rows:
   - fraud: `fraud_pattern` with `is_fraud` (pattern `pattern_shift`), vs
     stolen-key incidents;
   - fraud, any pattern: every `fraud_pattern` (also `pattern_and_volume`
     and `volume_change`), vs stolen-key incidents;
   - anomaly critical / warning+: `usage_spike` and `daily_anomaly`, vs
     spike incidents for recall; for precision an anomaly about a stolen
     key's night (a real anomaly) counts as true.
   Each row for all metrics together ("any") and for each metric alone,
   then, for all metrics together, per population: its customers' findings
   against its customers' incidents, false findings per 1000 of its
   customer-days, and how many false findings were about a benign
   look-alike (`false_on_benign`).
   Delay per detected incident: its earliest true finding, in event time
   (alert `event_time` - the incident's first event) and in wall time
   (alert `created_at` - when that event was acknowledged by the broker).
   The month is replayed in minutes, so wall delay is the pipeline's lag.
   Event-time delay is what it would be live, but for one effect of the
   replay: the dataflow folds a Kafka batch's events per (customer, metric,
   hour) before the detector sees them, stamped with the newest event, and
   a replayed batch spans hours of event time, so a detection can come up
   to an hour late. `--flow-batch-size` (private stack) makes batches
   smaller, closer to live traffic, at some cost in throughput.
Prints the machine and configuration, a table and one JSON line, for all
customers by metric, then per population; `--save` also writes the
incidents, benign labels, populations and alerts, to see what was found or
missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import orjson
from tqdm import tqdm

from common import private_system, report  # noqa: I001 - benchmarks run as scripts
from meterflow import sender, simulate
from meterflow.cli import mix_arg
from meterflow.clients import clickhouse_client
from meterflow.settings import Settings
from meterflow.simulate import Incident, Traffic
from meterflow.storage import ensure_all

ANOMALY_KINDS = ("usage_spike", "daily_anomaly")


@dataclass(frozen=True, slots=True)
class Finding:
    """Alerts about one (customer, kind, window), whatever their metric or severity."""

    customer_id: str
    kind: str
    window_start: int
    window_end: int
    raised: tuple[tuple[int, int], ...]  # (event_time, created_at) of each of its alerts, oldest first


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    alerts: Callable[[dict[str, Any]], bool]  # which alerts make findings of this row
    target: str  # the incident kind recall is measured against


def is_fraud(alert: dict[str, Any]) -> bool:
    return alert["kind"] == "fraud_pattern" and alert["evidence"].get("is_fraud") is True


ROWS = (
    Row("fraud (pattern_shift)", is_fraud, "fraud"),
    Row("fraud_pattern, any pattern", lambda a: a["kind"] == "fraud_pattern", "fraud"),
    Row("anomaly, critical", lambda a: a["kind"] in ANOMALY_KINDS and a["severity"] == "critical", "spike"),
    Row("anomaly, warning+", lambda a: a["kind"] in ANOMALY_KINDS, "spike"),
)


def findings(alerts: list[dict[str, Any]]) -> list[Finding]:
    grouped: dict[tuple[str, str, int, int], list[tuple[int, int]]] = {}
    for a in alerts:
        key = (a["customer_id"], a["kind"], a["window_start"], a["window_end"])
        grouped.setdefault(key, []).append((a["event_time"], a["created_at"]))
    return [Finding(*key, tuple(sorted(raised))) for key, raised in grouped.items()]


def detection(finding: Finding, incident: Incident) -> tuple[int, int] | None:
    """(event_time, created_at) of the first alert of `finding` that reports
    `incident`: same customer, overlapping windows, raised after the
    incident's first event (nothing detects what has not happened yet)."""
    if finding.customer_id != incident.customer_id:
        return None
    if finding.window_start >= incident.end_ms or incident.start_ms >= finding.window_end:
        return None
    return next((r for r in finding.raised if r[0] >= incident.first_event_ms), None)


def score(
    row: Row, metric: str, alerts: list[dict[str, Any]], incidents: tuple[Incident, ...],
    produced_at: dict[Incident, int], scored_from: dict[str, int], customer_days: float,
    benign: tuple[Incident, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """One row of the table: `row`'s alerts of `metric` ("any": all metrics) about
    the customers of `scored_from` against the labels. `benign`: look-alikes
    that a false finding may be about (counted as `false_on_benign`)."""
    mine = [a for a in alerts if a["customer_id"] in scored_from]
    everything = findings([a for a in mine if row.alerts(a) and metric in ("any", a["metric"])])
    found = [f for f in everything if f.window_start >= scored_from[f.customer_id]]
    incidents = tuple(i for i in incidents if i.customer_id in scored_from)
    by_customer: dict[str, list[Incident]] = {}
    for incident in incidents:
        by_customer.setdefault(incident.customer_id, []).append(incident)
    true = [f for f in found if any(detection(f, i) for i in by_customer.get(f.customer_id, ()))]
    targets = [i for i in incidents if i.kind == row.target]
    event_delays, wall_delays = [], []
    for incident in targets:
        hits = [hit for f in found if (hit := detection(f, incident))]
        if hits:
            event_delays.append((min(e for e, _ in hits) - incident.first_event_ms) / 60_000)
            if incident in produced_at:
                wall_delays.append((min(c for _, c in hits) - produced_at[incident]) / 1000)
    false = len(found) - len(true)
    labelled = {f for f in true}
    look_alikes = [f for f in found if f not in labelled and any(_overlaps(f, b) for b in benign)]
    return {
        "detector": row.name,
        "metric": metric,
        "incidents": len(targets),
        "detected": len(event_delays),
        "recall": _ratio(len(event_delays), len(targets)),
        "findings": len(found),
        "false": false,
        "precision": _ratio(len(true), len(found)),
        "false_per_1000_customer_days": round(1000 * false / customer_days, 1) if customer_days else None,
        "false_on_benign": len(look_alikes),
        "warm_up_findings": len(everything) - len(found),
        "median_delay_event_min": round(statistics.median(event_delays), 1) if event_delays else None,
        "median_delay_wall_s": round(statistics.median(wall_delays), 1) if wall_delays else None,
    }


def _overlaps(finding: Finding, label: Incident) -> bool:
    return (
        finding.customer_id == label.customer_id
        and finding.window_start < label.end_ms
        and label.start_ms < finding.window_end
    )


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def first_event_produced_at(traffic: Traffic, sent: sender.SendReport) -> dict[Incident, int]:
    """Wall-clock ms at which each incident's first event was acknowledged."""
    done = np.array([n for n, _ in sent.confirmed_at])
    at = np.array([ms for _, ms in sent.confirmed_at])
    out = {}
    for incident in traffic.incidents:
        if not incident.events:
            continue  # nothing was sent (a tiny customer's Poisson night can be empty)
        customer = traffic.customer_ids.index(incident.customer_id)
        mine = (traffic.timestamp == incident.first_event_ms) & (traffic.customer == customer)
        index = int(np.flatnonzero(mine)[0])
        out[incident] = int(at[np.searchsorted(done, index, side="right")])
    return out


@contextmanager
def system(kind: str, kafka_storage: str, flow_batch_size: int) -> Iterator[tuple[Settings, str]]:
    """(settings, customer prefix) of a private system or of the running one.

    The broker's storage defaults to memory here: a month of events is
    millions of messages, and on the 2-core VM the S3-backed broker's
    SeaweedFS saturated a core and stalled after ~1.8M (the subject here is
    detection, not the broker)."""
    if kind == "running":
        settings = Settings.from_env()
        ensure_all(settings)
        yield settings, f"sim{uuid.uuid4().hex[:6]}"
        return
    with private_system(kafka_storage=kafka_storage, flow_batch_size=flow_batch_size) as (_, settings):
        yield settings, "sim"


def wait_for_pipeline(
    ch, settings: Settings, prefix: str, expected: int, settle_s: float, timeout_s: float
) -> float:
    """Until every event is stored, then until the alerts stop changing;
    returns the monotonic time at which the last event was stored."""
    db = settings.clickhouse_database
    params = {"p": prefix + "-"}
    deadline = time.monotonic() + timeout_s

    def count(table: str) -> int:
        query = f"SELECT count() FROM `{db}`.{table} FINAL WHERE startsWith(customer_id, {{p:String}})"  # sql-ok
        return ch.query(query, parameters=params).result_rows[0][0]

    with tqdm(total=expected, desc="stored in ClickHouse", unit="ev", unit_scale=True) as bar:
        while bar.n < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {bar.n} of {expected} events stored after {timeout_s} s")
            time.sleep(2)
            bar.update(count("events") - bar.n)
    stored_at = time.monotonic()
    last, stable_since = -1, time.monotonic()
    with tqdm(desc="alerts settling", unit=" alerts") as bar:
        while time.monotonic() - stable_since < settle_s and time.monotonic() < deadline:
            time.sleep(1)
            now = count("alerts")
            if now != last:
                last, stable_since = now, time.monotonic()
                bar.update(now - bar.n)
    return stored_at


def read_alerts(ch, settings: Settings, prefix: str) -> list[dict[str, Any]]:
    query = (
        "SELECT customer_id, metric, kind, severity, score, toUnixTimestamp64Milli(window_start), "
        "toUnixTimestamp64Milli(window_end), evidence, toUnixTimestamp64Milli(created_at), "
        f"toUnixTimestamp64Milli(event_time) FROM `{settings.clickhouse_database}`.alerts FINAL "  # sql-ok
        "WHERE startsWith(customer_id, {p:String})"
    )
    names = ["customer_id", "metric", "kind", "severity", "score", "window_start", "window_end", "evidence",
             "created_at", "event_time"]  # fmt: skip
    rows = [dict(zip(names, row)) for row in ch.query(query, parameters={"p": prefix + "-"}).result_rows]
    return [{**row, "evidence": orjson.loads(row["evidence"])} for row in rows]


def scored_period(
    profiles: list[simulate.CustomerProfile], today: date, shape: simulate.TrafficShape
) -> tuple[dict[str, int], dict[str, float]]:
    """Per customer, when scoring starts (a day before any incident can
    begin: a finding about an incident starts no earlier), and its days
    scored. The first two weeks are the detectors' warm-up: their findings
    are counted apart, since a live system has learned long before."""
    scored_from = {p.customer_id: simulate.first_incident_ms(p, today, shape) - simulate.DAY_MS
                   for p in profiles}  # fmt: skip
    last_day = simulate.history_days(today, simulate.OLDEST_DAY + 1)[-1]
    ends = {p.customer_id: p.day_start_ms(last_day) + simulate.DAY_MS for p in profiles}
    return scored_from, {c: (ends[c] - start) / simulate.DAY_MS for c, start in scored_from.items()}


def by_population(
    profiles: list[simulate.CustomerProfile], month: Traffic, alerts: list[dict[str, Any]],
    produced_at: dict[Incident, int], scored_from: dict[str, int], days: dict[str, float],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every row, all metrics together, for each population and for all
    customers: the issue's targets hold per population (a detector that is
    quiet on office hours but pages every night for batch jobs fails)."""
    groups = {name: {p.customer_id for p in profiles if p.population == name} for name in simulate.POPULATIONS}
    groups = {name: ids for name, ids in groups.items() if ids}
    if len(groups) > 1:
        groups["all"] = set(scored_from)
    out = []
    for name, ids in groups.items():
        mine = {c: scored_from[c] for c in ids}
        for row in ROWS:
            scored = score(row, "any", alerts, month.incidents, produced_at, mine, sum(days[c] for c in ids),
                           month.benign)  # fmt: skip
            out.append({"population": name, "customers": len(ids), **scored})
    return out


def save(path: Path, profiles: list[simulate.CustomerProfile], month: Traffic, alerts: list[dict[str, Any]]) -> None:
    """Customers, labels and alerts as JSON lines, to look into what was found or missed."""
    with path.open("wb") as out:
        for profile in profiles:
            out.write(orjson.dumps({"customer": dataclasses.asdict(profile)}) + b"\n")
        for incident in month.incidents:
            out.write(orjson.dumps({"incident": dataclasses.asdict(incident)}) + b"\n")
        for look_alike in month.benign:
            out.write(orjson.dumps({"benign": dataclasses.asdict(look_alike)}) + b"\n")
        for alert in alerts:
            out.write(orjson.dumps({"alert": alert}) + b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--events-per-day", type=float, default=100.0, help="median weekday volume")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fraud-share", type=float, default=0.1, help="share of customers with a stolen key")
    parser.add_argument("--spike-share", type=float, default=0.1, help="share of customers with a spike")
    parser.add_argument("--populations", type=mix_arg, default={"office": 1.0}, metavar="NAME[:WEIGHT],...",
                        help=f"customer populations and weights, of {','.join(simulate.POPULATIONS)}")
    parser.add_argument("--spike-factor", type=float, nargs="+", default=[20.0], metavar="FACTOR",
                        help="times the usual busy-hour volume; LOW HIGH: drawn per spike")
    parser.add_argument("--background-share", type=float, default=0.0, help="of a day, off hours")
    parser.add_argument("--stack", choices=["private", "running"], default="private")
    parser.add_argument("--kafka-storage", choices=["memory", "s3"], default="memory",
                        help="the private broker's log (s3 stalls past ~1.8M events on 2 cores)")
    parser.add_argument("--flow-batch-size", type=int, default=Settings.flow_batch_size,
                        help="the private dataflow's Kafka batch (smaller: closer to live delays)")
    parser.add_argument("--settle-s", type=float, default=15.0, help="alerts unchanged this long = done")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--save", type=Path, help="write incidents and alerts here (JSON lines)")
    args = parser.parse_args()
    if len(args.spike_factor) > 2:
        parser.error("--spike-factor takes one factor or LOW HIGH")
    spike_factor = args.spike_factor[0] if len(args.spike_factor) == 1 else tuple(args.spike_factor)

    shape = simulate.TrafficShape(background_share=args.background_share)
    today = simulate.utc_today(int(time.time() * 1000))
    with system(args.stack, args.kafka_storage, args.flow_batch_size) as (settings, prefix):
        generating = time.monotonic()
        profiles = simulate.make_profiles(args.customers, args.seed, args.events_per_day, prefix, args.populations,
                                          today)  # fmt: skip
        month = simulate.labelled_month(
            profiles, today, args.seed, args.fraud_share, args.spike_share, spike_factor, shape=shape
        )
        generated_s = time.monotonic() - generating
        producing = time.monotonic()
        sent = sender.send(month, "kafka", settings, batch_size=5000, description="labelled month")
        produced_at = first_event_produced_at(month, sent)
        ch = clickhouse_client(settings)
        stored_at = wait_for_pipeline(ch, settings, prefix, len(month), args.settle_s, args.timeout_s)
        alerts = read_alerts(ch, settings, prefix)
    if args.save:
        save(args.save, profiles, month, alerts)

    scored_from, days = scored_period(profiles, today, shape)
    customer_days = sum(days.values())
    metrics = ["any", *sorted({a["metric"] for a in alerts})]
    rows = [
        score(row, metric, alerts, month.incidents, produced_at, scored_from, customer_days, month.benign)
        for row in ROWS
        for metric in metrics
    ]
    config = {
        "stack": args.stack if args.stack == "running" else f"private, {args.kafka_storage} broker",
        "flow_batch_size": settings.flow_batch_size,
        "customers": args.customers,
        "populations": ",".join(f"{name}:{weight:g}" for name, weight in args.populations.items()),
        "events_per_day": args.events_per_day,
        "background_share": args.background_share,
        "seed": args.seed,
        "spike_factor": spike_factor,
        "events": len(month),
        "fraud_incidents": sum(i.kind == "fraud" for i in month.incidents),
        "spike_incidents": sum(i.kind == "spike" for i in month.incidents),
        "benign_labels": len(month.benign),
        "scored_customer_days": round(customer_days),
        "alerts": len(alerts),
        "generate_s": round(generated_s, 1),
        "produce_s": round(sent.seconds, 1),
        "produce_to_all_stored_s": round(stored_at - producing, 1),
    }
    columns = ["detector", "metric", "incidents", "detected", "recall", "findings", "false", "precision",
               "false_per_1000_customer_days", "warm_up_findings", "median_delay_event_min",
               "median_delay_wall_s"]  # fmt: skip
    report("detection", config, columns, rows)
    columns = ["population", "customers", "detector", "incidents", "detected", "recall", "findings", "false",
               "precision", "false_per_1000_customer_days", "false_on_benign", "median_delay_event_min",
               "median_delay_wall_s"]  # fmt: skip
    report("detection per population", config, columns,
           by_population(profiles, month, alerts, produced_at, scored_from, days))  # fmt: skip
    return 0



if __name__ == "__main__":
    sys.exit(main())
