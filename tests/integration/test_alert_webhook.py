"""Alert webhooks through the real broker and Redis, to a real HTTP receiver:
signed, retried with the same event id, dead-lettered after the last try,
never sent twice — across a kill -9 of the delivering process too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from meterflow.stack import free_port
from meterflow.webhooks import DEAD_LETTERS_KEY, EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from operators.alerts import Alert
from tests.integration.conftest import now_ms, wait_for

SECRET = "whsec-test"


class Receiver:
    """An HTTP endpoint that records each request and answers as scripted per event id."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers[EVENT_ID_HEADER]
                receiver.requests.append({"event_id": event_id, "headers": dict(self.headers), "body": body})
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


@pytest.fixture
def webhook_env(settings, admin, receiver) -> dict[str, str]:
    topic = f"alerts-test-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(10)
    return {
        **os.environ,
        **settings.as_env(),
        "TOPIC_ALERTS": topic,
        "ALERT_WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ATTEMPTS": "3",
        "WEBHOOK_MAX_BACKOFF_S": "0.5",
    }


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meterflow.alert_webhook"], env=env)


def publish(env: dict[str, str], alert: Alert) -> None:
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    producer.produce(env["TOPIC_ALERTS"], alert.to_json(), key=alert.customer_id.encode())
    assert producer.flush(10) == 0


def an_alert(customer: str = "webhook-cust", kind: str = "usage_spike") -> Alert:
    start = now_ms() - now_ms() % 3_600_000 - uuid.uuid4().int % 1000 * 3_600_000
    return Alert(customer, "api_calls", kind, "critical", 4.2, start, start + 3_600_000, {"value": 99}, now_ms(), now_ms())


def dead_letters(redis) -> dict[str, dict]:
    return {d["event_id"]: d for d in map(orjson.loads, redis.lrange(DEAD_LETTERS_KEY, 0, -1))}


def test_alerts_are_delivered_signed_retried_and_dead_lettered(webhook_env, receiver, redis):
    flaky, down, refused = an_alert(), an_alert(), an_alert()
    receiver.script = {flaky.alert_id: [500, 502], down.alert_id: [503] * 10, refused.alert_id: [400]}
    process = start(webhook_env)
    try:
        for alert in (flaky, down, refused):
            publish(webhook_env, alert)

        tries = wait_for(lambda: len(receiver.received(flaky.alert_id)) == 3 and receiver.received(flaky.alert_id))
        for request in tries:  # every retry is the same event, freshly signed
            assert verify(SECRET, request["headers"][SIGNATURE_HEADER], request["body"])
            assert orjson.loads(request["body"])["alert_id"] == flaky.alert_id
        wait_for(lambda: {down.alert_id, refused.alert_id} <= set(dead_letters(redis)), what="dead letters")
        letters = dead_letters(redis)
        assert letters[down.alert_id]["attempts"] == 3 and letters[down.alert_id]["status"] == 503
        assert letters[refused.alert_id]["attempts"] == 1  # a 4xx is final
        assert len(receiver.received(down.alert_id)) == 3
        assert flaky.alert_id not in letters
    finally:
        process.terminate()
        process.wait(10)


def test_an_alert_is_sent_once_across_re_detection_and_kill_9(webhook_env, receiver):
    first = an_alert()
    process = start(webhook_env)
    try:
        publish(webhook_env, first)
        wait_for(lambda: receiver.received(first.alert_id), what="first delivery")
        publish(webhook_env, first)  # the dataflow re-detected the same finding
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        process = start(webhook_env)
        second = an_alert()
        publish(webhook_env, second)
        wait_for(lambda: receiver.received(second.alert_id), what="delivery after restart")
        assert len(receiver.received(first.alert_id)) == 1
        assert len(receiver.received(second.alert_id)) == 1
    finally:
        process.terminate()
        process.wait(10)
