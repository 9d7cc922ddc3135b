"""The Stripe stand-in is as strict as Stripe about idempotency keys, so the
billing tests that pass against it would pass against Stripe: a key reused
with other parameters is refused, an executed 5xx is saved and replayed, a
4xx is not saved, a key still in flight is a 409. Driven through the real
Stripe SDK where its behaviour matters (it must not retry a saved 5xx)."""

from __future__ import annotations

import threading
from typing import Iterator

import httpx
import pytest
import stripe

from tests.integration.stripe_standin import STRIPE_KEY, StripeStandIn


@pytest.fixture
def stand_in() -> Iterator[StripeStandIn]:
    with StripeStandIn() as s:
        yield s


def sdk(stand_in: StripeStandIn, retries: int = 2) -> stripe.StripeClient:
    return stripe.StripeClient(STRIPE_KEY, base_addresses={"api": stand_in.base_url}, max_network_retries=retries)


def create_customer(client: stripe.StripeClient, key: str, name: str = "a") -> stripe.Customer:
    return client.v1.customers.create({"description": name, "metadata": {"m": name}}, {"idempotency_key": key})


def test_a_key_reused_with_other_parameters_is_refused_and_executes_nothing(stand_in):
    client = sdk(stand_in)
    first = create_customer(client, "k1", "a")
    assert create_customer(client, "k1", "a").id == first.id  # the same request: replayed
    with pytest.raises(stripe.IdempotencyError) as refused:
        create_customer(client, "k1", "b")
    assert refused.value.http_status == 400 and "same parameters" in str(refused.value)
    assert [o["id"] for o in stand_in.objects.values()] == [first.id]
    assert [r.status for r in stand_in.requests] == [200, 200, 400]  # a 4xx is not retried by the SDK


def test_an_executed_5xx_is_saved_and_replayed_without_sdk_retries(stand_in):
    client = sdk(stand_in)
    stand_in.fail("POST", "/v1/customers", status=500)
    with pytest.raises(stripe.APIError) as failed:
        create_customer(client, "k2")
    assert failed.value.http_status == 500
    assert len(stand_in.requests) == 1  # Stripe-Should-Retry: false: the SDK does not retry in vain
    # The failure was used up, yet the key still answers the saved 500 ...
    raw = httpx.post(f"{stand_in.base_url}/v1/customers", data={"description": "a", "metadata[m]": "a"},
                     headers={"Idempotency-Key": "k2", "Authorization": f"Bearer {STRIPE_KEY}"})  # fmt: skip
    assert raw.status_code == 500
    assert (raw.headers["Idempotent-Replayed"], raw.headers["Stripe-Should-Retry"]) == ("true", "false")
    assert stand_in.objects == {}
    # ... until Stripe forgets it; another key executes.
    assert create_customer(client, "k2-retry1").id
    stand_in.forget_idempotency_keys()
    assert create_customer(client, "k2").id


def test_a_lost_answer_is_retried_by_the_sdk_and_replays_the_saved_success(stand_in):
    client = sdk(stand_in)
    stand_in.fail("POST", "/v1/customers", status=500, commit=True)
    created = create_customer(client, "k3")
    assert [r.status for r in stand_in.requests] == [500, 200]
    assert list(stand_in.objects) == [created.id]  # created once


def test_a_4xx_is_not_saved(stand_in):
    client = sdk(stand_in)
    stand_in.fail("POST", "/v1/customers", status=400, error_type="invalid_request_error", message="bad")
    with pytest.raises(stripe.InvalidRequestError):
        create_customer(client, "k4")
    assert create_customer(client, "k4").id  # the same key executes now


def test_a_key_still_in_flight_is_a_409(stand_in):
    release = stand_in.stall("POST", "/v1/customers")
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(first=create_customer(sdk(stand_in, 0), "k5")))
    first.start()
    try:
        second = httpx.post(f"{stand_in.base_url}/v1/customers", data={"description": "a", "metadata[m]": "a"},
                            headers={"Idempotency-Key": "k5", "Authorization": f"Bearer {STRIPE_KEY}"})  # fmt: skip
        assert second.status_code == 409 and second.json()["error"]["type"] == "idempotency_error"
    finally:
        release.set()
        first.join(10)
    assert results["first"].id in stand_in.objects  # type: ignore[attr-defined]
    # The SDK retries a 409 with the same key, and then gets the saved answer.
    assert create_customer(sdk(stand_in), "k5").id == results["first"].id  # type: ignore[attr-defined]


def test_search_by_metadata(stand_in):
    client = sdk(stand_in)
    a, b = create_customer(client, "s1", "a"), create_customer(client, "s2", "it's")
    found = client.v1.customers.search({"query": "metadata['m']:'a'"})
    assert [c.id for c in found.data] == [a.id]
    quoted = client.v1.customers.search({"query": "metadata['m']:'it\\'s'"})
    assert [c.id for c in quoted.data] == [b.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.search({"query": "status:'open' OR total>5"})
