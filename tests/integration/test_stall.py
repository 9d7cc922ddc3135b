"""The dataflow never stalls silently (issue 12): a broker whose log reads
are slower than the consumer's fetch wait answers every fetch empty, and
with the old 50 ms wait the flow stopped for good while everything said
"healthy".

The fault is the real one: a private Tansu broker stores its log in a
SeaweedFS behind `DelayProxy`, a loopback TCP proxy that delays every S3
answer, so the broker's own reads take longer than 50 ms. Tansu then
answers each fetch empty at the deadline, as it did on the tester's stack.
The dataflows under test read that broker and write into the session's
Redis, ClickHouse and S3; the session's API reads their heartbeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from meterflow import flow_progress
from meterflow.clients import kafka_admin
from meterflow.flow_progress import Heartbeat
from meterflow.local import add_dataflow
from meterflow.settings import Settings
from meterflow.stack import Stack, StackConfig, free_port
from meterflow.storage import ensure_topics
from operators.dedup import INGEST_ID_HEADER
from tests.integration.conftest import make_event, stored_count, wait_for

pytestmark = pytest.mark.integration

EVENTS = 3000
# Each S3 answer to the broker comes this late: longer than the old 50 ms
# fetch wait, well within the default FLOW_FETCH_WAIT_MS.
S3_DELAY_S = 0.15
OLD_FETCH_WAIT_MS = 50


class DelayProxy:
    """Loopback TCP proxy to `upstream_port` that holds every chunk the
    upstream sends back for `delay_s` (latency, not a slower link: chunks
    keep their order and are not delayed one after the other). Runs its own
    asyncio loop in a thread; `delay_s` can change while it runs."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="delay-proxy", daemon=True)
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            upstream_in, upstream_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_out.close()
            return
        answers: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward_requests() -> None:
            try:
                while data := await client_in.read(65536):
                    upstream_out.write(data)
                    await upstream_out.drain()
            finally:
                upstream_out.close()

        async def read_answers() -> None:
            while True:
                data = await upstream_in.read(65536)
                await answers.put((time.monotonic() + self.delay_s, data))
                if not data:
                    return

        async def deliver_answers() -> None:
            try:
                while True:
                    due, data = await answers.get()
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    if not data:
                        return
                    client_out.write(data)
                    await client_out.drain()
            finally:
                client_out.close()

        await asyncio.gather(forward_requests(), read_answers(), deliver_answers(), return_exceptions=True)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclasses.dataclass
class SlowBroker:
    bootstrap: str
    proxy: DelayProxy


@pytest.fixture(scope="module")
def slow_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowBroker]:
    """A Tansu broker with its log in its own SeaweedFS, reached through a DelayProxy."""
    config = StackConfig.ephemeral(tmp_path_factory.mktemp("slow-broker"))
    proxy = DelayProxy(config.s3_port)
    stack = Stack(dataclasses.replace(config, kafka_s3_port=proxy.port))
    try:
        stack.start_service("s3")
        stack.start_service("kafka")
        yield SlowBroker(f"127.0.0.1:{config.kafka_port}", proxy)
    finally:
        stack.stop()
        proxy.close()


def produce_backlog(settings: Settings, customer_id: str, count: int) -> None:
    """`count` valid events of one customer (one partition), as the API produces them."""
    ensure_topics(kafka_admin(settings), settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all", "linger.ms": 20})
    for _ in range(count):
        producer.produce(
            settings.topic_events,
            orjson.dumps(make_event(customer_id)),
            key=customer_id.encode(),
            headers=[(INGEST_ID_HEADER, uuid.uuid4().hex.encode())],
        )
    assert producer.flush(60) == 0


@dataclasses.dataclass
class Flow:
    """A dataflow process of the session's stack, reading the slow broker."""

    name: str
    url: str
    log_file: Path

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health/ready", timeout=5)

    def metric(self, name: str, partition: int) -> float | None:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels.get("partition") == str(partition):
                    return sample.value
        return None

    def log_events(self) -> list[dict]:
        lines = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue  # the last line, still being written
        return lines


@pytest.fixture
def start_flow(stack: Stack, settings: Settings, slow_broker: SlowBroker, tmp_path: Path, redis):
    """Starts a dataflow on the slow broker with the given settings, as
    `meterflow up` starts the real one; stops it afterwards and removes its
    heartbeat, so the session's API is not left degraded for the next test."""
    started: list[tuple[str, str, int | None]] = []

    def start(**overrides: object) -> Flow:
        flow_settings = dataclasses.replace(
            settings,
            kafka_bootstrap_servers=slow_broker.bootstrap,
            data_dir=tmp_path / f"flow-{len(started)}",  # its own recovery partitions
            flow_metrics_port=free_port(),
            snapshot_interval_s=1,
            **overrides,
        )
        name = f"dataflow-slow-{flow_settings.flow_metrics_port}"
        add_dataflow(stack, name, flow_settings)
        stack.start_service(name)
        started.append((name, flow_settings.topic_events, stack.status()[name].pid))
        url = f"http://{flow_settings.flow_metrics_host}:{flow_settings.flow_metrics_port}"
        return Flow(name, url, settings.data_dir / name / f"{name}.log")

    yield start
    for name, topic, pid in started:
        stack.stop_service(name)
        redis.hdel(flow_progress.key(topic), f"{socket.gethostname()}:{pid}")


def test_the_old_fetch_wait_stalls_on_a_slow_broker_and_the_stall_is_reported_everywhere(
    slow_broker, start_flow, api, clickhouse, settings, stack
):
    customer_id = f"stall-{uuid.uuid4().hex[:12]}"
    slow_broker.proxy.delay_s = 0.0
    produce_backlog(dataclasses.replace(settings, kafka_bootstrap_servers=slow_broker.bootstrap), customer_id, EVENTS)
    slow_broker.proxy.delay_s = S3_DELAY_S
    flow = start_flow(flow_fetch_wait_ms=OLD_FETCH_WAIT_MS, flow_stall_after_s=3.0)

    stalled = wait_for(lambda: flow.health().status_code == 503 and flow.health(), timeout_s=90, what="a 503")
    report = stalled.json()
    [stuck] = [p for p in report["partitions"] if p["stalled"]]
    # Nothing was read (the position is still the logical "beginning"), yet
    # the lag is measured. Tansu's high watermark is the base offset of the
    # partition's last batch + 1, so a backlog can read as little as 1.
    assert stuck["next_offset"] < 0 and stuck["lag"] >= 1 and report["stalled"], report
    partition = stuck["partition"]
    assert flow.metric("meterflow_flow_stalled", partition) == 1
    assert flow.metric("meterflow_flow_consumer_lag", partition) >= 1
    assert stored_count(clickhouse, settings, customer_id, final=False) == 0  # it really stopped
    status = stack.status()[flow.name]
    assert status.detail.startswith("STALLED: lag ")  # what meterflow status shows
    assert status.healthy and not status.ready  # alive (`up` is content), stalled (`status` exits 1)
    errors = wait_for(
        lambda: [e for e in flow.log_events() if e.get("event") == "dataflow_stalled"], what="the error line"
    )
    assert errors[0]["level"] == "error" and errors[0]["lag"] >= 1 and errors[0]["partition"] == partition
    wait_for(lambda: api.get("/health").json()["dependencies"]["dataflow"] == "stalled", what="API sees the stall")
    health = api.get("/health").json()
    assert health["status"] == "degraded" and health["ready"]  # ingest itself still works

    # The broker gets fast again: the same flow moves, and every report clears.
    slow_broker.proxy.delay_s = 0.0
    wait_for(lambda: stored_count(clickhouse, settings, customer_id) == EVENTS, timeout_s=120, what="the backlog")
    wait_for(lambda: flow.health().status_code == 200, what="ready again")
    assert flow.metric("meterflow_flow_stalled", partition) == 0
    wait_for(lambda: any(e.get("event") == "dataflow_progress_resumed" for e in flow.log_events()), what="resumed")
    wait_for(lambda: api.get("/health").json()["dependencies"]["dataflow"] == "ok", what="API ok again")


def test_the_default_fetch_wait_keeps_moving_through_the_same_slow_broker(
    slow_broker, start_flow, clickhouse, settings, stack
):
    customer_id = f"slow-{uuid.uuid4().hex[:12]}"
    topic = f"events.slow-{uuid.uuid4().hex[:8]}"  # its own backlog, on a topic the session's API does not watch
    slow_broker.proxy.delay_s = 0.0
    produce_backlog(
        dataclasses.replace(settings, kafka_bootstrap_servers=slow_broker.bootstrap, topic_events=topic),
        customer_id,
        EVENTS,
    )
    slow_broker.proxy.delay_s = S3_DELAY_S
    assert Settings().flow_fetch_wait_ms > S3_DELAY_S * 1000 > OLD_FETCH_WAIT_MS
    flow = start_flow(topic_events=topic, flow_stall_after_s=15.0)

    wait_for(lambda: stored_count(clickhouse, settings, customer_id) == EVENTS, timeout_s=180, what="the backlog")
    assert slow_broker.proxy.delay_s == S3_DELAY_S  # slow all along
    assert flow.health().status_code == 200
    assert not [e for e in flow.log_events() if e.get("event") == "dataflow_stalled"]
    wait_for(lambda: flow.health().json()["lag"] == 0, what="lag 0")
    assert stack.status()[flow.name].detail.startswith("lag 0, last progress ")


def scans(redis) -> int:
    """SCAN and KEYS commands the session's Redis has served so far, from any client."""
    stats = redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("scan", "keys"))


def test_the_api_reads_every_dataflow_process_heartbeat_from_one_key_and_a_silent_one_is_down(redis, settings, api):
    """`dataflow` in the API's /health, from the heartbeats in the session's
    Redis, for a topic no running dataflow reads. Neither reading them nor
    the API's /health walks the keyspace (it holds a dedup key per event)."""
    from api.routers.health import _dataflow_state

    topic = f"events.beats-{uuid.uuid4().hex[:8]}"
    clients = SimpleNamespace(redis=redis, settings=dataclasses.replace(settings, topic_events=topic))
    scanned = scans(redis)
    assert _dataflow_state(clients) == "down"  # no dataflow process at all

    def beat(process: str, stalled: bool) -> Heartbeat:
        return Heartbeat(process, stalled=stalled, lag=5 if stalled else 0, last_progress_ms=1, updated_ms=2)

    flow_progress.publish(redis, topic, beat("host-a:1", stalled=False), ttl_s=30)
    assert _dataflow_state(clients) == "ok"
    flow_progress.publish(redis, topic, beat("host-b:2", stalled=True), ttl_s=1)  # one of two processes
    assert _dataflow_state(clients) == "stalled"
    assert [b.process for b in flow_progress.read_all(redis, topic)] == ["host-a:1", "host-b:2"]
    assert redis.pttl(flow_progress.key(topic)) > 1000  # the shorter TTL did not shorten the hash's
    wait_for(lambda: _dataflow_state(clients) == "ok", what="the silent process's heartbeat to expire")
    assert redis.hkeys(flow_progress.key(topic)) == [b"host-a:1"]  # the expired beat is removed, not only ignored
    redis.hset(flow_progress.key(topic), "host-c:3", "not a heartbeat")
    assert _dataflow_state(clients) == "ok"  # an unreadable beat is no beat
    assert redis.hkeys(flow_progress.key(topic)) == [b"host-a:1"]
    redis.hdel(flow_progress.key(topic), "host-a:1")
    assert _dataflow_state(clients) == "down"
    assert api.get("/health").status_code == 200  # the session's API reads its topic's heartbeats
    assert scans(redis) == scanned


def test_a_reader_never_removes_a_beat_rewritten_after_it_expired(redis):
    """A process that was silent past its TTL and writes again between the
    reader's read and its clean-up keeps its new beat."""
    topic = f"events.beats-{uuid.uuid4().hex[:8]}"
    name = flow_progress.key(topic)
    late = Heartbeat("host-a:1", stalled=False, lag=0, last_progress_ms=1, updated_ms=2)
    redis.hset(name, late.process, late.as_json(expires_ms=1))  # expired long ago
    reader = type(redis)(connection_pool=redis.connection_pool)
    clean_up = reader.eval

    def rewrite_then_clean_up(*args):  # the process's next beat lands just before the clean-up
        flow_progress.publish(redis, topic, dataclasses.replace(late, updated_ms=3), ttl_s=30)
        return clean_up(*args)

    reader.eval = rewrite_then_clean_up
    assert flow_progress.read_all(reader, topic) == []  # what it read had expired
    assert [b.updated_ms for b in flow_progress.read_all(redis, topic)] == [3]
