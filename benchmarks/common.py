"""What every benchmark needs: a private system, generated events, the
machine's description, percentiles and one way to print results (a table
for people, one JSON line for tooling)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
from confluent_kafka import Producer
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meterflow.local import local_stack  # noqa: E402
from meterflow.settings import Settings  # noqa: E402
from meterflow.stack import Stack, StackConfig, free_port  # noqa: E402
from meterflow.storage import ensure_all  # noqa: E402


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


class Profiler:
    """py-spy (pip install py-spy) sampling a running process into collapsed
    stacks at `out` (one line per stack and sample count, for flame graph
    tools or a quick sort)."""

    def __init__(self, pid: int, out: Path) -> None:
        self._process = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "200",
             "--nonblocking", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        self._process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        self._process.wait(60)


def hot_frames(collapsed: Path, top: int = 25) -> list[tuple[float, str]]:
    """(share of samples, frame) for the frames most often on the stack."""
    totals: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples += int(count)
        for frame in set(stack.split(";")):
            totals[frame] = totals.get(frame, 0) + int(count)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return [(round(100 * n / samples, 1), frame) for frame, n in ranked[:top]] if samples else []


def _cpu_ticks(pid: int) -> int:
    proc = Path(f"/proc/{pid}")
    # After the ")" that closes the command name: utime and stime are fields 14 and 15.
    fields = (proc / "stat").read_text().rpartition(")")[2].split()
    children = [int(c) for task in proc.glob("task/*/children") for c in task.read_text().split()]
    return int(fields[11]) + int(fields[12]) + sum(_cpu_ticks(child) for child in children)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of the processes `pids` and their
    children (uvicorn workers), all threads (Linux /proc)."""
    return sum(_cpu_ticks(pid) for pid in pids) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@contextmanager
def private_system(
    start: Sequence[str] | None = None, kafka_storage: str = "s3", **overrides: Any
) -> Iterator[tuple[Stack, Settings]]:
    """The whole local system on free ports in a temporary directory, stopped
    afterwards. `start`: only these processes (core services always start);
    `overrides`: Settings fields (e.g. rate_limit_requests), on top of the
    environment (e.g. FLOW_BATCH_SIZE=5000), whose service addresses are
    replaced by the private ones. `kafka_storage`: the native broker's log,
    "s3" (durable, what `meterflow up` runs) or "memory"."""
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        config = StackConfig.ephemeral(Path(tmp), kafka_storage=kafka_storage)
        fields = {"log_level": "WARNING", **overrides, "api_port": free_port(), "flow_metrics_port": free_port(),
                  "data_dir": config.data_dir}
        base = dataclasses.replace(Settings.from_env(), **fields)
        settings = config.settings(base)
        stack = local_stack(config, settings)
        try:
            if start is None:
                stack.start()
            else:
                for name in ("s3", "redis", "kafka", "clickhouse", *start):
                    stack.start_service(name)
                ensure_all(settings)
            yield stack, settings
        finally:
            stack.stop()


def make_event(customer_id: str, timestamp: int, i: int) -> dict[str, Any]:
    return {
        "transaction_id": f"tx-{uuid.uuid4().hex}",
        "customer_id": customer_id,
        "event_type": "api_request",
        "timestamp": timestamp,
        "properties": {"bytes": i % 4096, "endpoint": "/v1/things", "region": ("eu", "us", "ap")[i % 3]},
    }


def fill_topic(settings: Settings, count: int, customers: int = 1000, topic: str | None = None) -> int:
    """Produce `count` valid events to events.raw (keyed by customer, as the
    API does); returns the bytes produced. Timestamps spread over the last
    hour so every event is valid when the dataflow reads it."""
    producer = Producer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    })  # fmt: skip
    now = int(time.time() * 1000)
    size = 0
    for i in tqdm(range(count), desc="fill events.raw", unit="ev", unit_scale=True, file=sys.stderr):
        customer = f"bench-{i % customers:05d}"
        value = orjson.dumps(make_event(customer, now - 3_600_000 + (i * 3_600_000) // count, i))
        size += len(value)
        while True:
            try:
                producer.produce(topic or settings.topic_events, value, key=customer.encode())
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("not every event was acknowledged by the broker")
    return size


def report(name: str, config: dict[str, Any], columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """A table for people, then one JSON line with everything."""
    print(f"\n{name}")
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}, Python {info['python']}")
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    print(json.dumps({"benchmark": name, "machine": info, "config": config, "results": list(rows)}))
