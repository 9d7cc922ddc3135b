"""Throughput of the native Kafka-protocol broker (Tansu).

    .venv/bin/python benchmarks/broker.py [--messages 200000] [--size 200] [--partitions 4]
                                          [--kafka-storage memory|s3]

Starts a private broker (an ephemeral `meterflow.stack.Stack`, only its
`kafka` service, plus `s3` for --kafka-storage s3, so the other services do
not compete for the CPU), creates a topic, then measures:

1. produce: confluent-kafka Producer, idempotent, acks=all, linger.ms=5,
   ~200-byte JSON events keyed by customer (prepared before timing);
2. consume with a group subscription (new group each run, from earliest):
   librdkafka defaults with poll() per message, defaults with
   consume(100000, 0.5), only session.timeout.ms 6000 +
   heartbeat.interval.ms 1000, and tuned settings (those two plus
   fetch.min.bytes 1 MiB, max.partition.fetch.bytes/fetch.max.bytes 50 MiB)
   with consume(100000, 0.5);
3. consume the way Bytewax's KafkaSource does: one Consumer per partition,
   assign() (no group), consume(1000, 0.001) round-robin, stats every
   second; with its default config and with the tuned fetch settings.

"join" is the time to the first message (group join, metadata, first
fetch); msg/s is measured from the first to the last message, "total
msg/s" includes the join. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meterflow.stack import Stack, StackConfig  # noqa: E402

TUNED_FETCH = {
    "fetch.min.bytes": 1024 * 1024,
    "max.partition.fetch.bytes": 50 * 1024 * 1024,
    "fetch.max.bytes": 50 * 1024 * 1024,
}
FAST_JOIN = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
TUNED_GROUP = {**TUNED_FETCH, **FAST_JOIN}
QUIET = {"log_level": 3}  # librdkafka: errors only


def make_messages(n: int, size: int) -> list[tuple[bytes, bytes]]:
    out = []
    now = int(time.time() * 1000)
    for i in range(n):
        customer = f"cust-{i % 500:04d}"
        event = {
            "transaction_id": f"tx-{uuid.uuid4().hex}",
            "customer_id": customer,
            "event_type": "api_request",
            "timestamp": now + i,
            "properties": {"bytes": i % 4096, "endpoint": "/v1/things"},
        }
        raw = json.dumps(event, separators=(",", ":"))
        pad = size - len(raw) - len(',"pad":""}') + 1
        if pad > 0:
            raw = raw[:-1] + f',"pad":"{"x" * pad}"}}'
        out.append((customer.encode(), raw.encode()))
    return out


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        **QUIET,
    })
    failed = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    t0 = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - t0
    return {
        "messages": len(messages),
        "seconds": round(elapsed, 3),
        "msg_per_s": round(len(messages) / elapsed),
        "mib_per_s": round(sum(len(v) for _, v in messages) / elapsed / 2**20, 1),
        "failed": failed + remaining,
    }


def _result(name: str, n: int, t0: float, first: float | None, last: float | None, got: int) -> dict[str, Any]:
    first = first or time.perf_counter()
    last = last or first
    read_s = max(last - first, 1e-9)
    return {
        "name": name,
        "messages": got,
        "complete": got >= n,
        "join_s": round(first - t0, 2),
        "read_s": round(read_s, 3),
        "msg_per_s": round(got / read_s),
        "total_msg_per_s": round(got / max(last - t0, 1e-9)),
    }


def consume_group(name: str, bootstrap: str, topic: str, n: int, extra: dict, batch: Callable | None) -> dict[str, Any]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        **QUIET,
        **extra,
    })
    t0 = time.perf_counter()
    consumer.subscribe([topic])
    got, first, last = 0, None, None
    deadline = time.monotonic() + 180
    try:
        while got < n and time.monotonic() < deadline:
            msgs = batch(consumer) if batch else [m for m in [consumer.poll(1.0)] if m is not None]
            for msg in msgs:
                if msg.error():
                    continue
                got += 1
                if first is None:
                    first = time.perf_counter()
            if msgs:
                last = time.perf_counter()
    finally:
        consumer.close()
    return _result(name, n, t0, first, last, got)


def consume_assigned(name: str, bootstrap: str, topic: str, partitions: int, n: int, extra: dict) -> dict[str, Any]:
    """Bytewax 0.21 KafkaSource: a Consumer per partition, assign(), consume(1000, 0.001)."""

    def stats(_json: str) -> None:
        json.loads(_json)  # Bytewax parses every stats payload for its lag gauge

    t0 = time.perf_counter()
    consumers = []
    for part in range(partitions):
        consumer = Consumer({
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": bootstrap,
            "enable.partition.eof": "True",
            "statistics.interval.ms": 1000,
            "stats_cb": stats,
            **QUIET,
            **extra,
        })
        consumer.assign([TopicPartition(topic, part, OFFSET_BEGINNING)])
        consumers.append(consumer)
    got, first, last = 0, None, None
    eof = [False] * partitions
    deadline = time.monotonic() + 180
    try:
        while not all(eof) and time.monotonic() < deadline:
            for i, consumer in enumerate(consumers):
                if eof[i]:
                    continue
                msgs = consumer.consume(1000, 0.001)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            eof[i] = True
                            break
                        continue
                    got += 1
                    if first is None:
                        first = time.perf_counter()
                if msgs:
                    last = time.perf_counter()
    finally:
        for consumer in consumers:
            consumer.close()
    return _result(name, n, t0, first, last, got)


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=200, help="approximate message size in bytes")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--kafka-storage", choices=["memory", "s3"], default="memory",
                        help="Tansu storage engine (s3: the stack's SeaweedFS, which then also runs)")
    args = parser.parse_args()

    messages = make_messages(args.messages, args.size)
    avg_size = sum(len(v) for _, v in messages) / len(messages)
    with tempfile.TemporaryDirectory(prefix="meterflow-bench-") as tmp:
        stack = Stack(StackConfig.ephemeral(Path(tmp), kafka_storage=args.kafka_storage))
        try:
            if args.kafka_storage == "s3":
                stack.start_service("s3")
            t0 = time.perf_counter()
            stack.start_service("kafka")
            start_s = time.perf_counter() - t0
            kafka_pid = stack.status()["kafka"].pid
            bootstrap = stack.config.settings().kafka_bootstrap_servers
            topic = "bench"
            admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
            admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(10)
            rss_before = rss_mib(kafka_pid)

            prod = produce(bootstrap, topic, messages)
            n = args.messages
            big = lambda c: c.consume(100_000, 0.5)  # noqa: E731
            consumers = [
                consume_group("group, defaults, poll()", bootstrap, topic, n, {}, None),
                consume_group("group, defaults, consume(100000, 0.5)", bootstrap, topic, n, {}, big),
                consume_group("group, session 6 s only, consume(100000, 0.5)", bootstrap, topic, n, FAST_JOIN, big),
                consume_group("group, tuned, consume(100000, 0.5)", bootstrap, topic, n, TUNED_GROUP, big),
                consume_assigned("assign (Bytewax), defaults", bootstrap, topic, args.partitions, n, {}),
                consume_assigned("assign (Bytewax), tuned fetch", bootstrap, topic, args.partitions, n, TUNED_FETCH),
            ]
            rss_after = rss_mib(kafka_pid)
        finally:
            stack.stop()

    print(f"Tansu broker, {args.kafka_storage} storage; {args.messages} messages of ~{avg_size:.0f} B, "
          f"{args.partitions} partitions; {os.cpu_count()} CPUs; broker start {start_s:.2f} s; "
          f"broker RSS {rss_before} -> {rss_after} MiB")
    print(f"{'':<46} {'msg/s':>9} {'total msg/s':>12} {'join s':>7} {'read s':>7}")
    print(f"{'produce (idempotent, acks=all, linger 5 ms)':<46} {prod['msg_per_s']:>9} {'':>12} {'':>7} "
          f"{prod['seconds']:>7}  {prod['mib_per_s']} MiB/s, failed {prod['failed']}")
    for c in consumers:
        flag = "" if c["complete"] else f"  INCOMPLETE ({c['messages']})"
        print(f"{c['name']:<46} {c['msg_per_s']:>9} {c['total_msg_per_s']:>12} {c['join_s']:>7} {c['read_s']:>7}{flag}")
    print(json.dumps({
        "benchmark": "broker",
        "broker": f"tansu-0.6.0-{args.kafka_storage}",
        "messages": args.messages,
        "avg_message_bytes": round(avg_size),
        "partitions": args.partitions,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "broker_start_s": round(start_s, 3),
        "broker_rss_mib": {"before": rss_before, "after": rss_after},
        "produce": prod,
        "consume": consumers,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
