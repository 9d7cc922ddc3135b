"""Alert webhooks to the operator's ALERT_WEBHOOK_URL, through the real
broker and Redis, to a real HTTP receiver: signed, retried with the same
event id, dead-lettered after the last try, never sent twice — across a
kill -9 of the webhook process too.

Each test runs its own webhook process (meterflow.webhook_worker) on a
private alerts topic and a private Redis database: the stack's own webhook
process, with the default retry settings, never sees these deliveries.
(Customer endpoints: tests/integration/test_webhooks.py, which reuses the
receiver and the process from here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from redis import Redis

from meterflow.stack import free_port
from meterflow.webhooks import DEAD_LETTERS_KEY, EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from operators.alerts import Alert
from tests.integration.conftest import now_ms, wait_for

SECRET = "whsec-test"


class Receiver:
    """An HTTP endpoint that records each request (with when it came) and
    answers as scripted per event id, after `delay_s`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: dict[str, list[int]] = {}
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers[EVENT_ID_HEADER]
                request = {
                    "event_id": event_id, "path": self.path, "headers": dict(self.headers), "body": body,
                    "at": time.monotonic(),
                }  # fmt: skip
                receiver.requests.append(request)
                time.sleep(receiver.delay_s)
                planned = receiver.script.get(event_id, [])
                self.send_response(planned.pop(0) if planned else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self, event_id: str) -> list[dict]:
        return [r for r in self.requests if r["event_id"] == event_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


WORKER_REDIS_DB = 1  # not the stack's 0


@pytest.fixture
def worker_env(settings, admin) -> dict[str, str]:
    """The environment of a webhook process of one test's own: a new alerts
    topic, an emptied Redis database, quick retries."""
    topic = f"alerts-test-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    redis_url = f"{settings.redis_url.rsplit('/', 1)[0]}/{WORKER_REDIS_DB}"
    with Redis.from_url(redis_url) as client:
        client.flushdb()
    return {
        **os.environ,
        **settings.as_env(),
        "TOPIC_ALERTS": topic,
        "REDIS_URL": redis_url,
        "WEBHOOK_ATTEMPTS": "3",
        "WEBHOOK_FIRST_BACKOFF_S": "0.1",
        "WEBHOOK_MAX_BACKOFF_S": "0.5",
        "WEBHOOK_TIMEOUT_S": "1",
    }


@pytest.fixture
def worker_redis(worker_env) -> Iterator[Redis]:
    client = Redis.from_url(worker_env["REDIS_URL"])
    yield client
    client.close()


@pytest.fixture
def webhook_env(worker_env, receiver) -> dict[str, str]:
    return {**worker_env, "ALERT_WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET}


class Worker:
    """The webhook process, started as `meterflow up` starts it; stopped at the end of the test."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "meterflow.webhook_worker"], env=self.env)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@contextmanager
def running(env: dict[str, str]) -> Iterator[Worker]:
    worker = Worker(env)
    try:
        yield worker
    finally:
        worker.stop()


def publish(env: dict[str, str], alert: Alert) -> None:
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    producer.produce(env["TOPIC_ALERTS"], alert.to_json(), key=alert.customer_id.encode())
    assert producer.flush(10) == 0


def an_alert(customer: str = "webhook-cust", kind: str = "usage_spike") -> Alert:
    start = now_ms() - now_ms() % 3_600_000 - uuid.uuid4().int % 1000 * 3_600_000
    return Alert(customer, "api_calls", kind, "critical", 4.2, start, start + 3_600_000, {"value": 99}, now_ms(), now_ms())


def dead_letters(client: Redis) -> dict[str, dict]:
    return {d["event_id"]: d for d in map(orjson.loads, client.lrange(DEAD_LETTERS_KEY, 0, -1))}


def test_alerts_are_delivered_signed_retried_and_dead_lettered(webhook_env, receiver, worker_redis):
    flaky, down, refused = an_alert(), an_alert(), an_alert()
    receiver.script = {flaky.alert_id: [500, 502], down.alert_id: [503] * 10, refused.alert_id: [400]}
    with running(webhook_env):
        for alert in (flaky, down, refused):
            publish(webhook_env, alert)

        tries = wait_for(lambda: len(receiver.received(flaky.alert_id)) == 3 and receiver.received(flaky.alert_id))
        for request in tries:  # every retry is the same event, freshly signed
            assert verify(SECRET, request["headers"][SIGNATURE_HEADER], request["body"])
            assert orjson.loads(request["body"])["alert_id"] == flaky.alert_id
        wait_for(lambda: {down.alert_id, refused.alert_id} <= set(dead_letters(worker_redis)), what="dead letters")
        letters = dead_letters(worker_redis)
        assert letters[down.alert_id]["attempts"] == 3 and letters[down.alert_id]["status"] == 503
        assert letters[refused.alert_id]["attempts"] == 1  # a 4xx is final
        assert len(receiver.received(down.alert_id)) == 3
        assert flaky.alert_id not in letters
        assert letters[down.alert_id]["endpoint_id"] == "operator"
        assert letters[down.alert_id]["customer_id"] == down.customer_id


def test_an_alert_is_sent_once_across_re_detection_and_kill_9(webhook_env, receiver):
    first = an_alert()
    with running(webhook_env) as worker:
        publish(webhook_env, first)
        wait_for(lambda: receiver.received(first.alert_id), what="first delivery")
        publish(webhook_env, first)  # the dataflow re-detected the same finding
        worker.kill()
        worker.start()
        second = an_alert()
        publish(webhook_env, second)
        wait_for(lambda: receiver.received(second.alert_id), what="delivery after restart")
        assert len(receiver.received(first.alert_id)) == 1
        assert len(receiver.received(second.alert_id)) == 1
