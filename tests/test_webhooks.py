"""The pure parts of webhook delivery, without services: the retry schedule,
how one attempt is classified, the envelope and the ids that make delivery
idempotent. (Delivery through Redis and real HTTP:
tests/integration/test_webhooks.py.)"""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest

from meterflow.webhook_outbox import EVENT_TYPES, check_url, delivery_id_for, envelope
from meterflow.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Attempt,
    RetryPolicy,
    WebhookEvent,
    attempt,
    non_public_address,
    sign,
    verify,
)

EVENT = WebhookEvent("evt_1", "invoice.created", b'{"id": "evt_1"}')


def scripted(statuses: list[int | type[Exception]], seen: list[httpx.Request]) -> httpx.Client:
    """A client whose server answers `statuses` in turn (an exception class: raised)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = statuses.pop(0)
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)
        return httpx.Response(answer)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_backoff_doubles_from_the_first_wait_up_to_the_cap():
    policy = RetryPolicy(attempts=8, first_backoff_s=0.5, max_backoff_s=5.0)
    assert [policy.backoff_s(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_retry_after_says_when_to_try_again_and_when_to_stop():
    policy = RetryPolicy(attempts=3, first_backoff_s=1.0, max_backoff_s=30.0)
    failed = Attempt(False, True, 503, "HTTP 503")
    assert policy.retry_after(1, failed) == 1.0
    assert policy.retry_after(2, failed) == 2.0
    assert policy.retry_after(3, failed) is None  # the last try
    assert policy.retry_after(1, Attempt(True, False, 200)) is None
    assert policy.retry_after(1, Attempt(False, False, 400, "HTTP 400")) is None


@pytest.mark.parametrize(
    ("answer", "delivered", "retriable"),
    [
        (200, True, False),
        (204, True, False),
        (301, False, False),  # redirects are not followed: the endpoint must be the final URL
        (400, False, False),
        (404, False, False),
        (408, False, True),
        (429, False, True),
        (500, False, True),
        (503, False, True),
        (httpx.ConnectError, False, True),
        (httpx.ReadTimeout, False, True),
    ],
)
def test_one_attempt_is_classified(answer, delivered, retriable):
    outcome = attempt(scripted([answer], []), "http://receiver.test/hook", EVENT, "whsec_x")
    assert (outcome.delivered, outcome.retriable) == (delivered, retriable)
    assert outcome.error is None if delivered else outcome.error


def test_an_attempt_is_signed_with_the_secret_and_carries_the_event_id():
    seen: list[httpx.Request] = []
    attempt(scripted([200], seen), "http://receiver.test/hook", EVENT, "whsec_x")
    request = seen[0]
    assert request.headers[EVENT_ID_HEADER] == "evt_1"
    assert request.content == EVENT.body
    assert verify("whsec_x", request.headers[SIGNATURE_HEADER], request.content)
    assert not verify("whsec_other", request.headers[SIGNATURE_HEADER], request.content)
    unsigned: list[httpx.Request] = []
    attempt(scripted([200], unsigned), "http://receiver.test/hook", EVENT)
    assert SIGNATURE_HEADER not in unsigned[0].headers


def test_verify_refuses_old_tampered_and_malformed_signatures():
    header = sign("s", 1_000, b"{}")
    assert verify("s", header, b"{}", now=1_100)
    assert not verify("s", header, b"{}", now=1_000 + 301)  # a replay, too late
    assert not verify("s", header, b'{"x": 1}', now=1_100)
    assert not verify("s", "garbage", b"{}", now=1_100)


def test_the_envelope_wraps_the_data_with_id_type_time_and_customer():
    data = {"invoice_id": "inv_1", "subtotal": Decimal("12.50"), "lines": [{"quantity": Decimal("3")}]}
    body = envelope("inv_1.created", "invoice.created", "cust-1", data, created=1_700_000_000)
    assert body.startswith(b'{"id":"inv_1.created","type":"invoice.created","created":1700000000')
    parsed = orjson.loads(body)
    assert parsed["customer_id"] == "cust-1"
    assert parsed["data"] == {"invoice_id": "inv_1", "subtotal": 12.5, "lines": [{"quantity": 3}]}
    assert b'"subtotal":12.50' in body  # money stays exact: no float on the way
    with pytest.raises(TypeError):
        envelope("e", "invoice.created", "c", {"x": object()}, created=0)


def test_a_delivery_id_is_fixed_by_endpoint_and_event():
    assert delivery_id_for("we_1", "evt") == delivery_id_for("we_1", "evt")
    assert delivery_id_for("we_1", "evt") != delivery_id_for("we_2", "evt")
    assert delivery_id_for("we_1", "evt") != delivery_id_for("we_1", "evt2")
    assert delivery_id_for("we_1", "evt").startswith("whd_")


@pytest.mark.parametrize("url", ["https://example.com/hooks", "http://127.0.0.1:8080/x?y=1"])
def test_http_urls_are_accepted(url):
    assert check_url(url) == url


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com/hook", "https://", "http://[::1", "'; DROP"])
def test_other_urls_are_refused(url):
    with pytest.raises(ValueError):
        check_url(url)


def test_the_known_event_types():
    assert set(EVENT_TYPES) == {
        "invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_failed", "alert.triggered",
    }  # fmt: skip


@pytest.mark.parametrize(
    "host, refused",
    [("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.10", True), ("169.254.169.254", True), ("::1", True),
     ("fd00::1", True), ("0.0.0.0", True), ("8.8.8.8", False), ("2001:4860:4860::8888", False),
     ("name.invalid", False)],  # fmt: skip
)
def test_non_public_addresses_are_recognised(host, refused):
    assert (non_public_address(host) is not None) is refused
