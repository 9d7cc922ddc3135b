"""flows.metrics progress and stall detection, with a hand-driven clock; the
fetch settings of flows.kafka_source; the heartbeat format of
meterflow.flow_progress; the dataflow's health endpoints and the line
`meterflow status` shows. The real stall, against a slow broker, is
tests/integration/test_stall.py."""

from __future__ import annotations

import threading
from typing import Iterator
from wsgiref.simple_server import make_server

import pytest
import redis
import structlog
from confluent_kafka import OFFSET_BEGINNING
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from flows import metrics
from flows.kafka_source import POLL_TIMEOUT_S, consumer_config
from meterflow.flow_progress import Heartbeat
from meterflow.local import dataflow_line, http_ok
from meterflow.settings import Settings

STALL_AFTER_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def progress(clock: Clock) -> metrics.Progress:
    return metrics.Progress(STALL_AFTER_S, clock=clock, wall=clock)


def test_an_idle_partition_without_backlog_is_never_stalled(progress, clock):
    progress.assigned("events.raw", 0, 500)
    for _ in range(10):
        clock.now += STALL_AFTER_S
        assert progress.observe("events.raw", 0, (0, 500)) is None
    report = progress.report()
    assert not report.stalled and report.lag == 0


def test_a_backlog_without_progress_is_stalled_after_the_limit_then_resumes(progress, clock):
    progress.assigned("events.raw", 0, 2_467_606)
    assert progress.observe("events.raw", 0, (0, 2_878_606)) is None
    clock.now += STALL_AFTER_S - 1
    assert progress.observe("events.raw", 0, (0, 2_878_606)) is None
    assert not progress.report().stalled
    clock.now += 1
    assert progress.observe("events.raw", 0, (0, 2_878_606)) == "stalled"
    assert progress.observe("events.raw", 0, (0, 2_878_606)) is None  # reported once, not every check
    report = progress.report()
    assert report.stalled and report.lag == 411_000
    assert report.partitions[("events.raw", 0)].stalled

    progress.read("events.raw", 0, 2_477_606)
    assert progress.observe("events.raw", 0, (0, 2_878_606)) == "resumed"
    assert not progress.report().stalled


def test_a_partition_idle_for_long_that_receives_messages_is_not_stalled_at_once(progress, clock):
    progress.assigned("events.raw", 1, 10)
    progress.observe("events.raw", 1, (0, 10))
    clock.now += 10 * STALL_AFTER_S  # idle: nothing moved, nothing to read
    assert progress.observe("events.raw", 1, (0, 11)) is None  # one new message: behind from now on
    assert not progress.report().stalled
    clock.now += STALL_AFTER_S
    assert progress.observe("events.raw", 1, (0, 11)) == "stalled"


def test_progress_within_the_limit_keeps_a_busy_partition_healthy(progress, clock):
    progress.assigned("events.raw", 0, 0)
    for offset in range(1, 20):
        clock.now += STALL_AFTER_S / 2
        progress.read("events.raw", 0, offset * 1000)
        assert progress.observe("events.raw", 0, (0, 10**9)) is None
    assert not progress.report().stalled


def test_a_fresh_start_that_reads_nothing_has_its_lag_measured_and_its_stall_reported(progress, clock):
    """The restarted flow of the issue had no lag samples at all: nothing
    was read, so nothing was recorded. The position before the first read
    is logical (OFFSET_BEGINNING); the backlog then starts at the low watermark."""
    progress.assigned("events.raw", 3, OFFSET_BEGINNING)
    progress.observe("events.raw", 3, (100, 5100))
    assert progress.report().lag == 5000
    clock.now += STALL_AFTER_S
    assert progress.observe("events.raw", 3, (100, 5100)) == "stalled"


def test_a_broker_that_stops_answering_keeps_the_last_lag_and_a_backlog_still_stalls(progress, clock):
    progress.assigned("events.raw", 0, 10)
    progress.observe("events.raw", 0, (0, 30))
    clock.now += STALL_AFTER_S
    assert progress.observe("events.raw", 0, None) == "stalled"
    assert progress.report().lag == 20


def test_a_broker_that_never_answered_stalls_nothing(progress, clock):
    progress.assigned("events.raw", 0, 10)
    clock.now += 10 * STALL_AFTER_S
    assert progress.observe("events.raw", 0, None) is None
    assert progress.report().lag is None and not progress.report().stalled


def test_unassigned_partitions_leave_the_report(progress):
    progress.assigned("events.raw", 0, 0)
    progress.unassigned("events.raw", 0)
    progress.read("events.raw", 0, 10)  # a late read of a closed partition is ignored
    assert progress.report().partitions == {}
    assert progress.observe("events.raw", 0, (0, 10)) is None


def test_fetches_wait_for_the_broker_longer_than_its_slow_reads_and_polls_stay_short():
    config = consumer_config(Settings())
    assert int(config["fetch.wait.max.ms"]) == Settings().flow_fetch_wait_ms >= 200  # 50 ms stalled for good
    assert config["fetch.min.bytes"] == "1"  # answered as soon as the broker has something
    # librdkafka refuses a socket timeout shorter than the wait + 1 s.
    slow = consumer_config(Settings(flow_fetch_wait_ms=45_000))
    assert int(slow["socket.timeout.ms"]) >= 45_000 + 1000
    assert POLL_TIMEOUT_S <= 0.01  # Bytewax's worker thread never waits on the broker


class FakeWatermarks:
    def __init__(self, answers: dict[int, tuple[int, int]]) -> None:
        self.answers = answers

    def get_watermark_offsets(self, tp, timeout):
        from confluent_kafka import KafkaError, KafkaException

        if tp.partition not in self.answers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return self.answers[tp.partition]


def down_redis() -> redis.Redis:
    """A real client of a port nobody listens on: every command fails."""
    from meterflow.stack import free_port

    return redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)


def test_the_watchdog_logs_a_stall_at_error_level_sets_the_gauges_and_survives_redis_down(clock):
    topic = "events.watchdog-test"
    progress = metrics.Progress(STALL_AFTER_S, clock=clock, wall=clock)
    progress.assigned(topic, 0, 0)
    progress.assigned(topic, 1, 0)
    watchdog = metrics.Watchdog(Settings(topic_events=topic), progress, down_redis())
    watchdog._consumer = FakeWatermarks({0: (0, 7)})  # partition 1: the broker does not answer
    with structlog.testing.capture_logs() as logs:
        watchdog.check()
        clock.now += STALL_AFTER_S
        report = watchdog.check()
    assert report.stalled and report.lag == 7
    assert watchdog.report() is report  # /health shows what the gauges and the log say
    stalled = [line for line in logs if line["event"] == "dataflow_stalled"]
    assert len(stalled) == 1 and stalled[0]["log_level"] == "error"
    assert stalled[0]["partition"] == 0 and stalled[0]["lag"] == 7
    assert [line["event"] for line in logs].count("flow_heartbeat_not_published") == 1  # not once per check
    assert any(line["event"] == "consumer_lag_unknown" for line in logs)

    def sample(name: str, partition: int) -> float | None:
        return REGISTRY.get_sample_value(name, {"topic": topic, "partition": str(partition)})

    assert sample("meterflow_flow_stalled", 0) == 1
    assert sample("meterflow_flow_consumer_lag", 0) == 7
    assert sample("meterflow_flow_stalled", 1) == 0
    assert sample("meterflow_flow_consumer_lag", 1) is None  # never measured: no sample, not a made-up 0

    progress.unassigned(topic, 0)
    watchdog.check()
    assert sample("meterflow_flow_stalled", 0) is None


def test_the_watchdog_checks_several_times_per_stall_period_and_its_heartbeat_outlives_a_check():
    assert metrics.check_interval_s(60) == 5.0
    assert metrics.check_interval_s(3) == 0.5
    watchdog = metrics.Watchdog(Settings(), metrics.Progress(3), down_redis())
    assert watchdog.heartbeat_ttl_s >= 3 * watchdog.interval_s


def test_a_heartbeat_reads_back_as_written():
    beat = Heartbeat("host:12", stalled=True, lag=411_000, last_progress_ms=1_700_000_000_000, updated_ms=3)
    assert Heartbeat.from_json("host:12", beat.as_json(expires_ms=9)) == (beat, 9)
    unknown = Heartbeat("host:12", stalled=False, lag=None, last_progress_ms=1, updated_ms=2)
    assert Heartbeat.from_json("host:12", unknown.as_json(expires_ms=4)) == (unknown, 4)


@pytest.fixture
def health_server(progress) -> Iterator[str]:
    server = make_server(
        "127.0.0.1", 0, metrics.health_app(progress.report, make_wsgi_app(REGISTRY)), ThreadingWSGIServer
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_health_ready_answers_503_while_stalled_and_status_says_so(health_server, progress, clock):
    import httpx

    progress.assigned("events.raw", 0, 40)
    progress.observe("events.raw", 0, (0, 40))
    assert httpx.get(f"{health_server}/health/ready").status_code == 200
    assert http_ok(f"{health_server}/health/ready")()
    assert dataflow_line(f"{health_server}/health") == "lag 0, last progress 0 s ago"

    progress.observe("events.raw", 0, (0, 1040))
    clock.now += STALL_AFTER_S + 30
    progress.observe("events.raw", 0, (0, 1040))
    ready = httpx.get(f"{health_server}/health/ready")
    assert ready.status_code == 503 and ready.json()["stalled"] and ready.json()["lag"] == 1000
    assert httpx.get(f"{health_server}/health").status_code == 200  # liveness: it still serves
    assert not http_ok(f"{health_server}/health/ready")()
    assert dataflow_line(f"{health_server}/health") == "STALLED: lag 1,000, last progress 90 s ago"
    assert "meterflow_flow_messages_in_total" in httpx.get(f"{health_server}/metrics").text


def test_status_says_when_the_dataflow_does_not_answer():
    from meterflow.stack import free_port

    assert dataflow_line(f"http://127.0.0.1:{free_port()}/health").startswith("progress unknown:")
