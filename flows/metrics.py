"""Prometheus metrics of the dataflow, served over HTTP by each dataflow process.

prometheus_client keeps one registry per process by design, and Bytewax's
workers are threads of one process, so the metric objects live here at
module level (the dataflow's one piece of global mutable state): every
worker adds to the same counters and one endpoint shows the process's
totals. A dataflow of several processes (`-i`/`-a`) has one endpoint per
process; `flows.run` gives process N the port FLOW_METRICS_PORT + N.

Progress and stalls: the Kafka source tells `PROGRESS` which partitions
this process reads and, after each poll that moved, the next offset (one
dict update per poll, nothing more on the hot path). A `Watchdog` thread
asks the broker for each partition's watermarks on a timer, whether or not
anything arrives, so the lag is measured even when the flow reads nothing,
and reports a partition that has a backlog but does not move for
FLOW_STALL_AFTER_S: gauges, an error log line, 503 on this server's
/health/ready and a heartbeat in Redis that the API's /health reads
(meterflow.flow_progress). An idle flow (no backlog) is not stalled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from meterflow import flow_progress
from meterflow.clients import redis_client
from meterflow.flow_progress import Heartbeat
from meterflow.settings import Settings
from operators.alerts import ALERT_KINDS

log = structlog.get_logger(__name__)

# Seconds; sinks block and retry through outages, hence the long tail.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SINKS = ("clickhouse", "s3", "dlq", "alerts")
# One check waits at most this long for the broker's watermarks, so a
# broker outage leaves the lag unmeasured instead of hanging the watchdog.
WATERMARK_TIMEOUT_S = 2.0

MESSAGES_IN = Counter("meterflow_flow_messages_in", "Messages read from events.raw, valid or not")
CONSUMER_ERRORS = Counter(
    "meterflow_flow_consumer_errors", "Errors the Kafka consumer reported instead of a message"
)
EVENTS_VALID = Counter("meterflow_flow_events_valid", "Messages that decoded into a valid event")
DEAD_LETTERS = Counter(
    "meterflow_flow_dead_letters", "Invalid messages written to the dead-letter topic (acknowledged)"
)
DUPLICATES_DROPPED = Counter(
    "meterflow_flow_duplicates_dropped", "Events dropped by dedup because another copy counts"
)
CLICKHOUSE_ROWS = Counter("meterflow_flow_clickhouse_rows", "Event rows inserted into ClickHouse")
S3_OBJECTS = Counter("meterflow_flow_s3_objects", "NDJSON backup objects written to S3")
ALERTS = Counter(
    "meterflow_flow_alerts", "Alerts emitted (ClickHouse alerts table and alerts topic), by kind", ["kind"]
)
SINK_WRITE_SECONDS = Histogram(
    "meterflow_flow_sink_write_seconds",
    "Time to write one batch to a sink, retries included",
    ["sink"],
    buckets=LATENCY_BUCKETS,
)
DEDUP_SECONDS = Histogram(
    "meterflow_flow_dedup_seconds",
    "Time to claim one batch's transaction_ids in Redis, retries included",
    buckets=LATENCY_BUCKETS,
)
# Every series from the start: a sink that never wrote shows 0, not nothing.
for _kind in ALERT_KINDS:
    ALERTS.labels(kind=_kind)
for _sink in SINKS:
    SINK_WRITE_SECONDS.labels(sink=_sink)

def count_decoded(valid: int, dead: int) -> None:
    """Count one decoded batch (once per batch: a counter takes a lock)."""
    MESSAGES_IN.inc(valid + dead)
    EVENTS_VALID.inc(valid)



def lag(high_watermark: int, next_offset: int) -> int:
    """Messages not yet read. Never negative: Tansu's high watermark can
    trail the last offset (docs/operations.md), which reads as 0."""
    return max(0, high_watermark - next_offset)


@dataclass
class PartitionState:
    """What this process knows about one partition it reads."""

    next_offset: int  # negative (OFFSET_BEGINNING) until the first read of a fresh start
    moved_at: float  # monotonic: the last read that moved the offset, or the assignment
    moved_at_wall: float  # the same moment as a Unix time, for people and the heartbeat
    behind_since: float | None = None  # monotonic: first check that saw a backlog since it was last caught up
    lag: int | None = None  # at the last check; None until the broker answered once
    stalled: bool = False


@dataclass(frozen=True)
class ProgressReport:
    """One process's progress, for /health, the heartbeat and the log."""

    stalled: bool
    lag: int | None  # summed over the partitions whose lag is known
    last_progress_wall: float  # the latest move of any partition (or the start)
    partitions: dict[tuple[str, int], PartitionState]
    now_wall: float  # when the report was made

    def as_json(self) -> dict[str, object]:
        now_wall = self.now_wall
        return {
            "status": "stalled" if self.stalled else "ok",
            "stalled": self.stalled,
            "lag": self.lag,
            "last_progress_s_ago": round(max(0.0, now_wall - self.last_progress_wall), 1),
            "partitions": [
                {
                    "topic": topic,
                    "partition": partition,
                    "next_offset": state.next_offset,
                    "lag": state.lag,
                    "stalled": state.stalled,
                    "last_progress_s_ago": round(max(0.0, now_wall - state.moved_at_wall), 1),
                }
                for (topic, partition), state in sorted(self.partitions.items())
            ],
        }


class Progress:
    """The partitions this process reads, how far it got, and whether each
    one is stalled.

    A partition is stalled when a check finds a backlog (lag > 0) and the
    offset has not moved for `stall_after_s`, counted from the later of its
    last move and the first check that saw the backlog: a partition idle
    for an hour that receives one message is not stalled at once. A check
    whose watermark query failed keeps the last known lag, so a broker
    outage with a backlog is reported too.
    """

    def __init__(
        self,
        stall_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int], PartitionState] = {}
        self._started_wall = wall()

    def assigned(self, topic: str, partition: int, next_offset: int) -> None:
        with self._lock:
            self._partitions[(topic, partition)] = PartitionState(next_offset, self._clock(), self._wall())

    def unassigned(self, topic: str, partition: int) -> None:
        with self._lock:
            self._partitions.pop((topic, partition), None)

    def read(self, topic: str, partition: int, next_offset: int) -> None:
        """The source read up to `next_offset` (exclusive); called after each poll that moved."""
        with self._lock:
            state = self._partitions.get((topic, partition))
            if state is not None and next_offset != state.next_offset:
                state.next_offset = next_offset
                state.moved_at = self._clock()
                state.moved_at_wall = self._wall()

    def positions(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset to read (a copy)."""
        with self._lock:
            return {key: state.next_offset for key, state in self._partitions.items()}

    def observe(self, topic: str, partition: int, watermarks: tuple[int, int] | None) -> str | None:
        """Record a check of one partition: `watermarks` = (low, high) from
        the broker, or None when it did not answer. Returns "stalled" or
        "resumed" when the partition's state changed, else None."""
        with self._lock:
            state = self._partitions.get((topic, partition))
            if state is None:
                return None
            now = self._clock()
            if watermarks is not None:
                low, high = watermarks
                # Before the first read of a fresh start the position is a
                # logical offset; the backlog then begins at the low watermark.
                state.lag = lag(high, state.next_offset if state.next_offset >= 0 else low)
            if not state.lag:
                state.behind_since = None
                stalled = False
            else:
                if state.behind_since is None:
                    state.behind_since = now
                stalled = now - max(state.moved_at, state.behind_since) >= self.stall_after_s
            changed = stalled != state.stalled
            state.stalled = stalled
            if not changed:
                return None
            return "stalled" if stalled else "resumed"

    def report(self) -> ProgressReport:
        with self._lock:
            partitions = {key: dataclasses.replace(state) for key, state in self._partitions.items()}
        known = [state.lag for state in partitions.values() if state.lag is not None]
        return ProgressReport(
            stalled=any(state.stalled for state in partitions.values()),
            lag=sum(known) if known else None,
            last_progress_wall=max((s.moved_at_wall for s in partitions.values()), default=self._started_wall),
            partitions=partitions,
            now_wall=self._wall(),
        )


PROGRESS = Progress()

CONSUMER_LAG = Gauge(
    "meterflow_flow_consumer_lag",
    "Messages in the partition not yet read by the dataflow (high watermark - next offset), "
    "measured every check whether or not messages arrive",
    ["topic", "partition"],
)
STALLED = Gauge(
    "meterflow_flow_stalled",
    "1 while the partition has a backlog and the dataflow has not read from it for FLOW_STALL_AFTER_S",
    ["topic", "partition"],
)
LAST_PROGRESS = Gauge(
    "meterflow_flow_last_progress_timestamp_seconds",
    "Unix time the dataflow last moved in the partition (or started reading it)",
    ["topic", "partition"],
)


def check_interval_s(stall_after_s: float) -> float:
    """Seconds between two checks: several per stall period, so a stall is
    reported soon after FLOW_STALL_AFTER_S, but at most every 5 s (each
    check is one watermark request per partition)."""
    return min(5.0, max(0.25, stall_after_s / 6))


class Watchdog:
    """Checks this process's partitions on a timer (thread `flow-watchdog`):
    watermarks from the broker, `PROGRESS.observe`, the gauges, a log line
    per change and the Redis heartbeat. Nothing it meets (broker or Redis
    down) stops it or the dataflow; it logs and tries again next time."""

    def __init__(self, settings: Settings, progress: Progress, client: redis.Redis) -> None:
        self._settings = settings
        self._progress = progress
        self._redis = client
        self.interval_s = check_interval_s(progress.stall_after_s)
        # Gone after four intervals without a check: the API then says "down".
        self.heartbeat_ttl_s = max(2, math.ceil(4 * self.interval_s))
        self._process = f"{socket.gethostname()}:{os.getpid()}"
        self._last: ProgressReport | None = None
        self._shown: set[tuple[str, int]] = set()
        self._redis_failing = False
        # Only asks for watermarks: never subscribes, so never joins a group.
        self._consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "meterflow-lag-probe"}
        )

    def start(self) -> None:
        threading.Thread(target=self._run, name="flow-watchdog", daemon=True).start()

    def _run(self) -> None:
        # A first heartbeat at once: the API knows the dataflow runs before
        # any partition is assigned.
        while True:
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one check
                log.exception("flow_watchdog_check_failed")
            time.sleep(self.interval_s)

    def _watermarks(self, topic: str, partition: int, deadline: float) -> tuple[int, int] | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=left)
        except KafkaException as exc:
            log.warning("consumer_lag_unknown", topic=topic, partition=partition, error=str(exc))
            return None

    def report(self) -> ProgressReport:
        """The last check's report (what the gauges, the log and Redis say),
        or the live state before the first check."""
        return self._last or self._progress.report()

    def check(self) -> ProgressReport:
        """One round: every partition's lag and stall state, then the report.

        The watermarks come first (a slow broker makes them slow), then
        every partition's state changes at once, and the gauges, log lines,
        heartbeat and /health follow from the same report.
        """
        deadline = time.monotonic() + WATERMARK_TIMEOUT_S
        marks = {key: self._watermarks(*key, deadline) for key in sorted(self._progress.positions())}
        changes = []
        for (topic, partition), watermarks in marks.items():
            change = self._progress.observe(topic, partition, watermarks)
            if change is not None:
                changes.append((change, topic, partition))
        report = self._progress.report()
        for change, topic, partition in changes:
            self._log_change(change, report, topic, partition)
        self._export(report)
        self._publish(report)
        self._last = report
        return report

    def _log_change(self, change: str, report: ProgressReport, topic: str, partition: int) -> None:
        state = report.partitions[(topic, partition)]
        fields = {"topic": topic, "partition": partition, "next_offset": state.next_offset, "lag": state.lag}
        if change == "stalled":
            log.error(
                "dataflow_stalled",
                seconds_without_progress=round(report.now_wall - state.moved_at_wall, 1),
                stall_after_s=self._progress.stall_after_s,
                **fields,
            )
        else:
            log.info("dataflow_progress_resumed", **fields)

    def _export(self, report: ProgressReport) -> None:
        for key in self._shown - set(report.partitions):
            for gauge in (CONSUMER_LAG, STALLED, LAST_PROGRESS):
                gauge.remove(key[0], str(key[1]))
        for (topic, partition), state in report.partitions.items():
            labels = (topic, str(partition))
            if state.lag is not None:
                CONSUMER_LAG.labels(*labels).set(state.lag)
            STALLED.labels(*labels).set(1 if state.stalled else 0)
            LAST_PROGRESS.labels(*labels).set(state.moved_at_wall)
        self._shown = set(report.partitions)

    def _publish(self, report: ProgressReport) -> None:
        beat = Heartbeat(
            process=self._process,
            stalled=report.stalled,
            lag=report.lag,
            last_progress_ms=int(report.last_progress_wall * 1000),
            updated_ms=int(time.time() * 1000),
        )
        try:
            flow_progress.publish(self._redis, self._settings.topic_events, beat, self.heartbeat_ttl_s)
        except redis.RedisError as exc:
            if not self._redis_failing:
                log.warning("flow_heartbeat_not_published", error=str(exc))
            self._redis_failing = True
            return
        self._redis_failing = False


def health_app(report: Callable[[], ProgressReport], metrics_app: Callable) -> Callable:
    """WSGI: /health (200, the progress as JSON), /health/ready (503 while
    stalled, for orchestrators and `meterflow status`), anything else the
    Prometheus metrics. `report` gives the progress to show."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/health", "/health/ready"):
            return metrics_app(environ, start_response)
        now = report()
        body = json.dumps(now.as_json()).encode()
        status = "503 Service Unavailable" if path == "/health/ready" and now.stalled else "200 OK"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Scrapes every few seconds would flood stderr."""


def serve(settings: Settings) -> None:
    """Start this process's watchdog, and serve its metrics and health at
    http://FLOW_METRICS_HOST:FLOW_METRICS_PORT/metrics, /health, /health/ready.

    A port already taken (another dataflow on this machine) costs the
    metrics and the health endpoints, not the dataflow nor the watchdog:
    metering goes on, stalls are still logged and published to Redis.
    """
    PROGRESS.stall_after_s = settings.flow_stall_after_s
    watchdog = Watchdog(settings, PROGRESS, redis_client(settings))
    watchdog.start()
    if not settings.flow_metrics_port:
        return
    app = health_app(watchdog.report, make_wsgi_app(REGISTRY))
    try:
        server = make_server(
            settings.flow_metrics_host, settings.flow_metrics_port, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        log.warning("flow_metrics_not_served", port=settings.flow_metrics_port, error=str(exc))
        return
    threading.Thread(target=server.serve_forever, name="flow-metrics", daemon=True).start()
    log.info("flow_metrics_served", host=settings.flow_metrics_host, port=settings.flow_metrics_port)
