"""Admin routes closed by default (issue 12, item 6), against the real Redis:
loopback only while ADMIN_TOKEN is unset (the listening address at start,
the connection and the Host header per request), the admin rate limit, and
listing and revoking a customer's keys by id. (The token itself:
test_security.py and test_admin_and_aggregations.py; the start-up refusal
of `python -m api.serve`: tests/test_admin_exposure.py.)"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from api.exposure import AdminExposed
from api.main import create_app
from tests.integration.conftest import new_customer

KEYS = "/v1/admin/keys"


def mint(client: httpx.Client | TestClient, customer_id: str, name: str = "k", **kwargs) -> httpx.Response:
    return client.post(KEYS, json={"customer_id": customer_id, "name": name}, **kwargs)


def new_id() -> str:
    return f"adm-{uuid.uuid4().hex[:12]}"


# -- loopback only while ADMIN_TOKEN is unset --------------------------------------


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]",
                                  "[::1]:{port}", "127.0.0.2:{port}"])  # fmt: skip
def test_without_a_token_loopback_host_names_are_admitted(api, settings, host):
    response = mint(api, new_id(), headers={"Host": host.format(port=settings.api_port)})
    assert response.status_code == 201, (host, response.text)


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:{port}", "localhost.attacker.example", "127.0.0.1.nip.io:{port}",
     "localhost:{port}@attacker.example", "[::ffff:7f00:1]x", "192.168.1.10:{port}", "[::]:{port}", "0.0.0.0",
     "localhost:", "localhost:port", "[localhost]:{port}", ""],
)  # fmt: skip
def test_without_a_token_other_host_names_are_refused_as_dns_rebinding_would_send_them(api, settings, host, redis):
    """A page on attacker.example whose name now resolves to 127.0.0.1 gets
    its requests to the API, with `Host: attacker.example`: 403, no key."""
    customer_id = new_id()
    response = mint(api, customer_id, headers={"Host": host.format(port=settings.api_port)})
    assert response.status_code == 403, (host, response.text)
    assert "ADMIN_TOKEN is not set" in response.json()["error"]
    for path, method in ((f"{KEYS}?customer_id={customer_id}", "GET"), (f"{KEYS}/revoke", "POST")):
        other = api.request(method, path, json={"api_key": "mf_x"}, headers={"Host": host.format(port=settings.api_port)})
        assert other.status_code == 403, (host, path, other.text)
    assert not redis.exists(f"apikeys:{customer_id}")


@pytest.mark.parametrize(
    "header", ["X-Forwarded-For", "Forwarded", "X-Forwarded-Host", "X-Real-IP"]
)
def test_without_a_token_a_request_passed_on_by_a_reverse_proxy_is_refused(api, settings, header, redis):
    """nginx on the same machine connects over loopback and by default sends
    `Host: 127.0.0.1:<port>`: only its forwarding header tells that the
    request came from elsewhere."""
    customer_id = new_id()
    value = "for=203.0.113.9" if header == "Forwarded" else "203.0.113.9"
    response = mint(api, customer_id, headers={header: value})
    assert response.status_code == 403, response.text
    assert "proxy" in response.json()["error"]
    assert not redis.exists(f"apikeys:{customer_id}")
    assert mint(api, new_id()).status_code == 201  # the same request without the header


def test_without_a_token_a_connection_to_a_non_loopback_address_is_refused(settings):
    """An app served on a public address some other way than api.serve
    (say `uvicorn --factory --host 0.0.0.0`) still opens no admin route to
    what arrives there, whatever Host header it names."""
    with TestClient(create_app(settings), base_url="http://192.0.2.10", client=("192.0.2.99", 4000)) as client:
        response = mint(client, new_id(), headers={"Host": "localhost"})
    assert response.status_code == 403 and "loopback address" in response.json()["error"], response.text


def test_with_a_token_the_host_does_not_matter_only_the_token(settings):
    token = "t-" + uuid.uuid4().hex
    app = create_app(dataclasses.replace(settings, admin_token=token, api_host="0.0.0.0"))
    with TestClient(app, base_url="http://meterflow.example.com", client=("198.51.100.7", 4000)) as client:
        assert mint(client, new_id(), headers={"X-Admin-Token": token}).status_code == 201
        assert mint(client, new_id(), headers={"Host": "localhost"}).status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "meterflow.example.com", ""])
def test_the_app_is_not_built_without_a_token_on_a_non_loopback_host(settings, host):
    with pytest.raises(AdminExposed, match="ADMIN_TOKEN is not set.*Set ADMIN_TOKEN"):
        create_app(dataclasses.replace(settings, api_host=host))
    create_app(dataclasses.replace(settings, api_host=host, admin_token="t-" + uuid.uuid4().hex))


# -- the admin rate limit ----------------------------------------------------------


def test_admin_routes_are_rate_limited_per_client_address_wrong_tokens_included(settings, redis):
    token = "t-" + uuid.uuid4().hex
    app = create_app(dataclasses.replace(settings, admin_token=token, admin_rate_limit_requests=3))
    address = f"guesser-{uuid.uuid4().hex[:8]}"  # its own window in Redis
    with TestClient(app, client=(address, 4000)) as guesser, TestClient(app, client=(address + "b", 4000)) as other:
        assert [mint(guesser, new_id(), headers={"X-Admin-Token": f"guess-{i}"}).status_code for i in range(3)] == [
            401, 401, 401,
        ]  # fmt: skip
        limited = mint(guesser, new_id(), headers={"X-Admin-Token": token})  # even the right token, now
        assert limited.status_code == 429, limited.text
        assert "rate limit of 3 requests per 60 s" in limited.json()["error"]
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-RateLimit-Limit"] == "3" and limited.headers["X-RateLimit-Remaining"] == "0"
        assert guesser.get(KEYS, params={"customer_id": "x"}, headers={"X-Admin-Token": token}).status_code == 429
        # Another address has its own window.
        assert mint(other, new_id(), headers={"X-Admin-Token": token}).status_code == 201
    assert redis.exists(f"ratelimit:admin:{address}")


# -- listing and revoking a customer's keys -----------------------------------------


def test_an_admin_lists_a_customers_keys_without_the_keys_or_their_hashes(api):
    customer_id = new_id()
    first = mint(api, customer_id, "laptop").json()["api_key"]
    second = mint(api, customer_id, "ci").json()["api_key"]
    mint(api, new_id(), "someone else's")
    response = api.get(KEYS, params={"customer_id": customer_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["customer_id"] == customer_id
    listed = body["keys"]
    assert sorted(k["name"] for k in listed) == ["ci", "laptop"]
    assert {k["prefix"] for k in listed} == {first[:11], second[:11]}
    for key in listed:
        assert set(key) == {"key_id", "name", "prefix", "created_at", "revoked_at"}
        assert key["key_id"].startswith("key_") and key["revoked_at"] is None
    text = response.text
    for raw in (first, second):
        assert raw not in text
        assert hashlib.sha256(raw.encode()).hexdigest() not in text
    assert api.get(KEYS, params={"customer_id": new_id()}).json()["keys"] == []


def test_an_admin_revokes_a_key_by_its_id_and_the_key_stops_working(api):
    customer = new_customer(api, "adm")
    spare = mint(api, customer.customer_id, "spare").json()["api_key"]
    usage = {"customer_id": customer.customer_id, "metric": "api_calls", "start": 0, "end": 1}
    assert api.get("/v1/usage", params=usage, headers=customer.headers).status_code == 200
    [target] = [k for k in api.get(KEYS, params={"customer_id": customer.customer_id}).json()["keys"]
                if k["prefix"] == customer.api_key[:11]]  # fmt: skip

    revoked = api.delete(f"{KEYS}/{target['key_id']}", params={"customer_id": customer.customer_id})
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}, revoked.text
    assert api.get("/v1/usage", params=usage, headers=customer.headers).status_code == 401
    assert api.get("/v1/usage", params=usage, headers={"X-API-Key": spare}).status_code == 200
    listed = {k["key_id"]: k for k in api.get(KEYS, params={"customer_id": customer.customer_id}).json()["keys"]}
    assert listed[target["key_id"]]["revoked_at"] is not None
    assert [k["revoked_at"] for i, k in listed.items() if i != target["key_id"]] == [None]
    # Again: still revoked, the first time kept.
    again = api.delete(f"{KEYS}/{target['key_id']}", params={"customer_id": customer.customer_id})
    assert again.json() == {"revoked": True}
    relisted = {k["key_id"]: k for k in api.get(KEYS, params={"customer_id": customer.customer_id}).json()["keys"]}
    assert relisted[target["key_id"]]["revoked_at"] == listed[target["key_id"]]["revoked_at"]


def test_revoking_by_id_needs_the_keys_own_customer(api):
    owner, other = new_customer(api, "adm"), new_customer(api, "adm")
    [key] = api.get(KEYS, params={"customer_id": owner.customer_id}).json()["keys"]
    wrong = api.delete(f"{KEYS}/{key['key_id']}", params={"customer_id": other.customer_id})
    assert wrong.status_code == 404 and "no API key with that id" in wrong.json()["error"]
    unknown = api.delete(f"{KEYS}/key_{uuid.uuid4().hex[:24]}", params={"customer_id": owner.customer_id})
    assert unknown.status_code == 404
    for bad in ("mf_notanid", "key_XYZ", "key_" + "0" * 61):
        malformed = api.delete(f"{KEYS}/{bad}", params={"customer_id": owner.customer_id})
        assert malformed.status_code == 400 and "key_id" in malformed.json()["error"], (bad, malformed.text)
    usage = {"customer_id": owner.customer_id, "metric": "api_calls", "start": 0, "end": 1}
    assert api.get("/v1/usage", params=usage, headers=owner.headers).status_code == 200


def test_revoking_by_the_raw_key_still_works_and_shows_in_the_list(api):
    customer = new_customer(api, "adm")
    assert api.post(f"{KEYS}/revoke", json={"api_key": customer.api_key}).json() == {"revoked": True}
    [key] = api.get(KEYS, params={"customer_id": customer.customer_id}).json()["keys"]
    assert key["revoked_at"] is not None
    assert api.post(f"{KEYS}/revoke", json={"api_key": "mf_" + uuid.uuid4().hex}).status_code == 404
