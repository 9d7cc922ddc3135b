"""Customer webhooks: the /v1/webhooks routes against the running API, and
delivery through real Redis to real HTTP receivers: signed with each
endpoint's own secret, retried on the schedule, dead after the last try,
once per event id, a slow endpoint delaying nobody else, nothing lost to a
kill -9 of the webhook process, and alerts on the topic reaching the
customer's endpoint.

The delivery tests run their own webhook process with quick retries on a
private Redis database (tests/integration/test_alert_webhook.py), and an
in-process API on that database to read /v1/webhooks/deliveries.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Iterator

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from redis import Redis

from api.main import create_app
from meterflow import webhook_outbox as outbox
from meterflow.webhook_outbox import publish
from meterflow.webhooks import DEAD_LETTERS_KEY, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, verify
from tests.integration.conftest import Customer, new_customer, wait_for
from tests.integration.test_alert_webhook import (  # noqa: F401 - fixtures used below
    Receiver,
    an_alert,
    receiver,
    running,
    worker_env,
    worker_redis,
)

WEBHOOKS = "/v1/webhooks"


def register(api: httpx.Client | TestClient, customer: Customer, url: str, events: list[str]) -> dict[str, Any]:
    body = {"customer_id": customer.customer_id, "url": url, "events": events}
    response = api.post(WEBHOOKS, json=body, headers=customer.headers)
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(api: httpx.Client | TestClient, customer: Customer, **params: str) -> list[dict[str, Any]]:
    query = {"customer_id": customer.customer_id, **params}
    response = api.get(f"{WEBHOOKS}/deliveries", params=query, headers=customer.headers)
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def dead_letters(client: Redis) -> list[dict[str, Any]]:
    return [orjson.loads(d) for d in client.lrange(DEAD_LETTERS_KEY, 0, -1)]


def new_event_id() -> str:
    return f"inv_{uuid.uuid4().hex[:12]}.created"


# -- the routes, on the stack's API ------------------------------------------------


def test_an_endpoint_is_registered_listed_and_deleted(api, customer):
    created = register(api, customer, "https://example.com/hooks", ["invoice.created", "alert.triggered"])
    assert set(created) == {"id", "customer_id", "url", "events", "secret", "created_at"}
    assert created["id"].startswith("we_") and created["secret"].startswith("whsec_")
    assert created["customer_id"] == customer.customer_id
    assert created["events"] == ["invoice.created", "alert.triggered"]
    other = register(api, customer, "http://hooks.example.com:8080/b", ["invoice.paid", "invoice.paid"])
    assert other["events"] == ["invoice.paid"]  # duplicates collapse
    assert other["secret"] != created["secret"]  # one secret per endpoint

    listed = api.get(WEBHOOKS, params={"customer_id": customer.customer_id}, headers=customer.headers)
    assert listed.status_code == 200
    assert listed.json() == {"customer_id": customer.customer_id, "endpoints": [created, other]}

    params = {"customer_id": customer.customer_id}
    gone = api.delete(f"{WEBHOOKS}/{created['id']}", params=params, headers=customer.headers)
    assert gone.status_code == 204 and gone.content == b""
    again = api.delete(f"{WEBHOOKS}/{created['id']}", params=params, headers=customer.headers)
    assert again.status_code == 404 and again.json()["error"]
    left = api.get(WEBHOOKS, params=params, headers=customer.headers).json()["endpoints"]
    assert [e["id"] for e in left] == [other["id"]]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"url": "ftp://example.com/hooks"}, "url"),
        ({"url": "https://"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://example.com/" + "x" * 2100}, "url"),
        ({"events": ["invoice.deleted"]}, "events"),
        ({"events": []}, "events"),
        ({"events": "invoice.created"}, "events"),
    ],
)
def test_a_bad_endpoint_is_a_422_that_says_why(api, customer, change, reason):
    body = {"customer_id": customer.customer_id, "url": "https://example.com/hooks", "events": ["invoice.created"]}
    response = api.post(WEBHOOKS, json={**body, **change}, headers=customer.headers)
    assert response.status_code == 422 and reason in response.json()["error"], response.text


def test_a_customer_never_sees_or_changes_another_customers_endpoints(api):
    victim, attacker = new_customer(api, "whv"), new_customer(api, "wha")
    endpoint = register(api, victim, "https://victim.example.com/hooks", ["invoice.created"])
    as_victim = {"customer_id": victim.customer_id}
    h = attacker.headers
    body = {**as_victim, "url": "https://attacker.example.com/", "events": ["invoice.created"]}
    for response in (
        api.post(WEBHOOKS, json=body, headers=h),
        api.get(WEBHOOKS, params=as_victim, headers=h),
        api.get(f"{WEBHOOKS}/deliveries", params=as_victim, headers=h),
        api.delete(f"{WEBHOOKS}/{endpoint['id']}", params=as_victim, headers=h),
    ):
        assert response.status_code == 403 and response.json()["error"], response.text
    # Under its own customer id, the victim's endpoint is simply not there.
    own = {"customer_id": attacker.customer_id}
    assert api.delete(f"{WEBHOOKS}/{endpoint['id']}", params=own, headers=h).status_code == 404
    assert api.get(WEBHOOKS, params=own, headers=h).json()["endpoints"] == []
    assert api.get(WEBHOOKS, params=as_victim, headers=victim.headers).json()["endpoints"] == [endpoint]


def test_a_customer_has_at_most_16_endpoints(api, customer):
    for i in range(16):
        register(api, customer, f"https://example.com/hooks/{i}", ["invoice.created"])
    body = {"customer_id": customer.customer_id, "url": "https://example.com/17", "events": ["invoice.created"]}
    response = api.post(WEBHOOKS, json=body, headers=customer.headers)
    assert response.status_code == 409 and "16" in response.json()["error"]


# -- delivery, with a webhook process and an API of the tests' own ---------------


@pytest.fixture
def private_api(settings, worker_env) -> Iterator[TestClient]:
    """The API on the webhook process's Redis database."""
    app = create_app(dataclasses.replace(settings, redis_url=worker_env["REDIS_URL"]))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # loopback: admin routes open (no ADMIN_TOKEN)
        yield client


@pytest.fixture
def tenant(private_api) -> Customer:
    return new_customer(private_api, "wh")  # type: ignore[arg-type]  # TestClient speaks httpx's API


def test_an_event_reaches_each_subscribed_endpoint_signed_with_its_secret(
    private_api, tenant, receiver, worker_env, worker_redis
):
    a = register(private_api, tenant, receiver.url + "?a", ["invoice.created"])
    b = register(private_api, tenant, receiver.url + "?b", ["invoice.created", "invoice.paid"])
    register(private_api, tenant, receiver.url + "?c", ["invoice.finalized"])
    event_id = new_event_id()
    data = {"invoice_id": event_id.split(".")[0], "subtotal": 12.5}
    with running(worker_env):
        assert publish(worker_redis, tenant.customer_id, "invoice.created", event_id, data) == 2
        requests = wait_for(lambda: len(receiver.received(event_id)) == 2 and receiver.received(event_id))
    by_path = {r["path"].rsplit("?", 1)[1]: r for r in requests}
    assert set(by_path) == {"a", "b"}
    for name, endpoint in (("a", a), ("b", b)):
        request = by_path[name]
        assert verify(endpoint["secret"], request["headers"][SIGNATURE_HEADER], request["body"])
        assert request["headers"][EVENT_ID_HEADER] == event_id
        assert request["headers"][EVENT_TYPE_HEADER] == "invoice.created"
        envelope = orjson.loads(request["body"])
        assert set(envelope) == {"id", "type", "created", "customer_id", "data"}
        assert (envelope["id"], envelope["type"], envelope["data"]) == (event_id, "invoice.created", data)
        assert envelope["customer_id"] == tenant.customer_id and abs(envelope["created"] - time.time()) < 60
    assert not verify(a["secret"], by_path["b"]["headers"][SIGNATURE_HEADER], by_path["b"]["body"])
    listed = wait_for(lambda: [d for d in deliveries(private_api, tenant) if d["status"] == "delivered"] or None)
    assert sorted(d["endpoint_id"] for d in listed) == sorted([a["id"], b["id"]])
    assert {(d["event_id"], d["attempts"], d["last_status"]) for d in listed} == {(event_id, 1, 200)}


def test_a_failing_endpoint_is_retried_on_the_schedule_then_delivered(
    private_api, tenant, receiver, worker_env, worker_redis
):
    endpoint = register(private_api, tenant, receiver.url, ["invoice.created"])
    event_id = new_event_id()
    receiver.script = {event_id: [500, 503]}
    with running(worker_env):
        publish(worker_redis, tenant.customer_id, "invoice.created", event_id, {})
        tries = wait_for(lambda: len(receiver.received(event_id)) == 3 and receiver.received(event_id))
        delivered = wait_for(lambda: deliveries(private_api, tenant, status="delivered"))
    gaps = [later["at"] - earlier["at"] for earlier, later in zip(tries, tries[1:])]
    assert gaps[0] >= 0.1 - 0.02 and gaps[1] >= 0.2 - 0.02, gaps  # WEBHOOK_FIRST_BACKOFF_S, doubled
    assert {r["headers"][EVENT_ID_HEADER] for r in tries} == {event_id}
    assert all(verify(endpoint["secret"], r["headers"][SIGNATURE_HEADER], r["body"]) for r in tries)
    assert [(d["attempts"], d["last_status"]) for d in delivered] == [(3, 200)]
    assert dead_letters(worker_redis) == []


def test_after_the_last_try_or_a_4xx_a_delivery_is_dead_and_dead_lettered(
    private_api, tenant, receiver, worker_env, worker_redis
):
    endpoint = register(private_api, tenant, receiver.url, ["invoice.finalized"])
    down, refused = new_event_id(), new_event_id()
    receiver.script = {down: [503] * 10, refused: [400]}
    with running(worker_env):
        for event_id in (down, refused):
            publish(worker_redis, tenant.customer_id, "invoice.finalized", event_id, {})
        dead = wait_for(lambda: len(deliveries(private_api, tenant, status="dead")) == 2 and deliveries(
            private_api, tenant, status="dead"
        ), what="two dead deliveries")  # fmt: skip
    assert {d["event_id"]: (d["attempts"], d["last_status"]) for d in dead} == {down: (3, 503), refused: (1, 400)}
    assert deliveries(private_api, tenant, status="pending") == []
    assert len(receiver.received(down)) == 3 and len(receiver.received(refused)) == 1
    letters = {letter["event_id"]: letter for letter in dead_letters(worker_redis)}
    assert set(letters) == {down, refused}
    for letter in letters.values():
        assert letter["endpoint_id"] == endpoint["id"] and letter["customer_id"] == tenant.customer_id
        assert letter["url"] == receiver.url and orjson.loads(letter["body"])["type"] == "invoice.finalized"
    assert (letters[down]["attempts"], letters[down]["status"]) == (3, 503)
    assert (letters[refused]["attempts"], letters[refused]["status"]) == (1, 400)


def test_an_event_published_twice_is_delivered_once(private_api, tenant, receiver, worker_env, worker_redis):
    register(private_api, tenant, receiver.url, ["invoice.paid"])
    event_id = new_event_id()
    with running(worker_env):
        assert publish(worker_redis, tenant.customer_id, "invoice.paid", event_id, {"n": 1}) == 1
        assert publish(worker_redis, tenant.customer_id, "invoice.paid", event_id, {"n": 2}) == 0
        wait_for(lambda: deliveries(private_api, tenant, status="delivered"))
        assert publish(worker_redis, tenant.customer_id, "invoice.paid", event_id, {"n": 3}) == 0  # after, too
        time.sleep(0.5)
    [request] = receiver.received(event_id)
    assert orjson.loads(request["body"])["data"] == {"n": 1}


def test_a_slow_endpoint_delays_no_other_endpoint(private_api, tenant, receiver, worker_env, worker_redis):
    slow = Receiver()
    slow.delay_s = 5.0  # past WEBHOOK_TIMEOUT_S: every try times out
    try:
        other = new_customer(private_api, "wh")  # type: ignore[arg-type]
        register(private_api, tenant, slow.url, ["invoice.created"])
        register(private_api, other, receiver.url, ["invoice.created"])
        with running(worker_env):
            for _ in range(20):  # more than the process has delivery threads
                publish(worker_redis, tenant.customer_id, "invoice.created", new_event_id(), {})
            wait_for(lambda: slow.requests, what="the slow endpoint busy")
            event_id = new_event_id()
            sent = time.monotonic()
            publish(worker_redis, other.customer_id, "invoice.created", event_id, {})
            [request] = wait_for(lambda: receiver.received(event_id), what="the other endpoint's delivery")
            assert request["at"] - sent < 1.0
        arrivals = [r["at"] for r in slow.requests]
        # One try at a time per endpoint: the next begins when the last timed out.
        assert all(later - earlier > 0.9 for earlier, later in zip(arrivals, arrivals[1:])), arrivals
    finally:
        slow.server.shutdown()


def test_a_kill_9_of_the_webhook_process_loses_no_delivery(private_api, tenant, receiver, worker_env, worker_redis):
    register(private_api, tenant, receiver.url, ["invoice.created"])
    in_flight, queued = new_event_id(), new_event_id()
    receiver.delay_s = 0.8  # within WEBHOOK_TIMEOUT_S: the process is waiting for the answer when killed
    with running(worker_env) as worker:
        publish(worker_redis, tenant.customer_id, "invoice.created", in_flight, {})
        wait_for(lambda: receiver.received(in_flight), what="the attempt under way")
        worker.kill()
        publish(worker_redis, tenant.customer_id, "invoice.created", queued, {})  # while no process runs
        receiver.delay_s = 0.0
        worker.start()
        # The killed attempt's claim lapses (4 x WEBHOOK_TIMEOUT_S), then it is tried again.
        done = wait_for(lambda: len(deliveries(private_api, tenant, status="delivered")) == 2 and deliveries(
            private_api, tenant, status="delivered"
        ), what="both delivered")  # fmt: skip
    assert {d["event_id"] for d in done} == {in_flight, queued}
    assert len(receiver.received(in_flight)) == 2  # the answer the killed process never read, and the retry
    assert len(receiver.received(queued)) == 1


def test_deleting_an_endpoint_drops_its_pending_deliveries(private_api, tenant, receiver, worker_env, worker_redis):
    endpoint = register(private_api, tenant, receiver.url, ["invoice.created"])
    event_id = new_event_id()
    assert publish(worker_redis, tenant.customer_id, "invoice.created", event_id, {}) == 1  # no process running
    [pending] = deliveries(private_api, tenant, status="pending")
    assert (pending["event_id"], pending["endpoint_id"], pending["attempts"]) == (event_id, endpoint["id"], 0)
    params = {"customer_id": tenant.customer_id}
    assert private_api.delete(f"{WEBHOOKS}/{endpoint['id']}", params=params, headers=tenant.headers).status_code == 204
    assert deliveries(private_api, tenant) == []
    with running(worker_env):
        time.sleep(1.0)
    assert receiver.requests == []
    assert list(worker_redis.scan_iter(match=f"webhook:*{endpoint['id']}*")) == []


# -- alerts, through the whole stack -------------------------------------------


def test_an_alert_reaches_the_customers_endpoint_as_alert_triggered(api, customer, settings, receiver):
    """The stack's own webhook process (`meterflow up` starts it) consumes the
    stack's alerts topic and delivers to the endpoint registered through its API."""
    endpoint = register(api, customer, receiver.url, ["alert.triggered"])
    register(api, customer, receiver.url + "?invoices", ["invoice.created"])  # not subscribed: nothing
    alert = an_alert(customer.customer_id)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(settings.topic_alerts, alert.to_json(), key=customer.customer_id.encode())
    assert producer.flush(10) == 0
    [request] = wait_for(lambda: receiver.received(alert.alert_id), timeout_s=60, what="alert.triggered")
    assert request["path"] == "/hooks"
    assert request["headers"][EVENT_TYPE_HEADER] == "alert.triggered"
    assert verify(endpoint["secret"], request["headers"][SIGNATURE_HEADER], request["body"])
    envelope = orjson.loads(request["body"])
    assert (envelope["id"], envelope["type"], envelope["customer_id"]) == (
        alert.alert_id, "alert.triggered", customer.customer_id,
    )  # fmt: skip
    assert envelope["data"] == alert.to_dict()
    [listed] = wait_for(lambda: deliveries(api, customer, status="delivered"))
    assert (listed["event_id"], listed["endpoint_id"]) == (alert.alert_id, endpoint["id"])


def test_endpoints_in_meterflows_own_network_are_refused(settings, worker_env, worker_redis, receiver):
    """With WEBHOOK_ALLOW_PRIVATE_URLS off (the default outside development),
    no customer can point MeterFlow at loopback, private or metadata addresses."""
    strict = dataclasses.replace(settings, redis_url=worker_env["REDIS_URL"], webhook_allow_private_urls=False)
    with TestClient(create_app(strict), base_url="http://127.0.0.1") as api:
        tenant = new_customer(api, "wh")  # type: ignore[arg-type]
        for url in ("http://127.0.0.1:18123/", "http://169.254.169.254/latest/meta-data", "http://localhost/x",
                    "http://[::1]/x", "http://10.0.0.8/hook",
                    # IPv6 forms that embed an IPv4 address (issue 12, item 7)
                    "http://[::127.0.0.1]/x", "http://[::ffff:127.0.0.1]/x", "http://[64:ff9b::a9fe:a9fe]/latest",
                    "http://[2002:a9fe:a9fe::]/x", "http://2130706433:18123/"):  # fmt: skip
            body = {"customer_id": tenant.customer_id, "url": url, "events": ["invoice.created"]}
            refused = api.post(WEBHOOKS, json=body, headers=tenant.headers)
            assert refused.status_code == 422 and "not a public address" in refused.json()["error"], (url, refused.text)
    # An endpoint that got in anyway (registered while allowed, or its name
    # resolves elsewhere now) is checked again at every try: dead, never sent.
    outbox.create_endpoint(worker_redis, tenant.customer_id, receiver.url, ["invoice.created"])
    event_id = new_event_id()
    publish(worker_redis, tenant.customer_id, "invoice.created", event_id, {})
    with running({**worker_env, "WEBHOOK_ALLOW_PRIVATE_URLS": "false"}):
        letters = wait_for(lambda: [d for d in dead_letters(worker_redis) if d["event_id"] == event_id])
    assert "not a public address" in letters[0]["error"] and letters[0]["attempts"] == 1
    assert receiver.received(event_id) == []
