"""The simplest possible Kafka -> ClickHouse copy: the yardstick of the dataflow.

    .venv/bin/python benchmarks/baseline_copy.py [--events 1000000]

One confluent-kafka consumer assigned to every partition of a pre-filled
`events.raw`, `consume(10000)` at a time, orjson parse, one columnar insert
per batch into a copy of the events table. No validation, no dedup, no S3,
no detectors: what a bare copy costs on this machine, so the dataflow's
figure (benchmarks/dataflow.py runs this in the same session) reads as a
ratio of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from tqdm import tqdm

from common import fill_topic, private_system, report  # noqa: I001 - benchmarks run as scripts
from meterflow.clients import clickhouse_client
from meterflow.settings import Settings
from meterflow.storage import EVENTS_COLUMNS

COPY_TABLE = "events_copy"


def property_texts(properties: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in properties.items()}


def copy(settings: Settings, expected: int) -> dict[str, Any]:
    """Copy `expected` messages from events.raw into COPY_TABLE; returns the figures."""
    db = settings.clickhouse_database
    ch = clickhouse_client(settings)
    ch.command(f"CREATE TABLE IF NOT EXISTS `{db}`.{COPY_TABLE} AS `{db}`.events")  # sql-ok: configuration
    ch.command(f"TRUNCATE TABLE `{db}`.{COPY_TABLE}")  # sql-ok: configuration
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": "baseline-copy",
        "enable.auto.commit": False,
        "fetch.min.bytes": 1024 * 1024,
        "max.partition.fetch.bytes": 50 * 1024 * 1024,
        "log_level": 3,
    })  # fmt: skip
    topic = settings.topic_events
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    copied = 0
    started, started_cpu = time.monotonic(), time.process_time()
    with tqdm(total=expected, desc="baseline copy", unit="ev", unit_scale=True, file=sys.stderr) as bar:
        while copied < expected:
            messages = [m for m in consumer.consume(10000, 1.0) if m.error() is None]
            if not messages:
                continue
            events = [orjson.loads(m.value()) for m in messages]
            columns = [
                [e["transaction_id"] for e in events],
                [e["customer_id"] for e in events],
                [e["event_type"] for e in events],
                [e["timestamp"] for e in events],
                [property_texts(e["properties"]) for e in events],
            ]
            ch.insert(f"{db}.{COPY_TABLE}", columns, column_names=EVENTS_COLUMNS, column_oriented=True)
            copied += len(events)
            bar.update(len(events))
    seconds = time.monotonic() - started
    cpu = time.process_time() - started_cpu
    consumer.close()
    return {"pipeline": "baseline_copy", "events": copied, "seconds": round(seconds, 2),
            "events_per_s": round(copied / seconds), "cpu_us_per_event": round(cpu * 1e6 / copied, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with private_system(start=[]) as (_, settings):
        fill_topic(settings, args.events)
        result = copy(settings, args.events)
    report("baseline_copy", {"events": args.events, "partitions": settings.topic_partitions},
           ["pipeline", "events", "seconds", "events_per_s", "cpu_us_per_event"], [result])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
