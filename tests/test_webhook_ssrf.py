"""Where webhook deliveries may go, without services: the address classifier
on every form the issue named (IPv6 forms that embed an IPv4 address), and
the delivery client against a real loopback receiver, proving it connects to
the address it checked however DNS answers afterwards, with the URL's name
in Host, SNI and certificate verification. (Registration and the
webhook process in strict mode: tests/integration/test_webhooks.py.)"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from meterflow import webhooks
from meterflow.webhooks import WebhookEvent, attempt, delivery_client, non_public_address, refusal

EVENT = WebhookEvent("evt_ssrf", "invoice.created", b"{}")


@pytest.mark.parametrize(
    "address, expected",
    [
        ("::127.0.0.1", "IPv4-compatible"),  # the three forms
        ("64:ff9b::a9fe:a9fe", "NAT64 to 169.254.169.254: link-local"),
        ("2002:a9fe:a9fe::", "6to4 of 169.254.169.254: link-local"),
        ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
        ("::ffff:a9fe:a9fe", "IPv4-mapped 169.254.169.254"),
        ("::8.8.8.8", "IPv4-compatible"),  # deprecated whatever it embeds
        ("64:ff9b::a00:1", "NAT64 to 10.0.0.1: private"),
        ("64:ff9b:1::808:808", "local-use NAT64"),
        ("2002:7f00:1::", "6to4 of 127.0.0.1: loopback"),
        ("2002:a00:1:1::5", "6to4 of 10.0.0.1: private"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("2001::a9fe:a9fe", "Teredo"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "private"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_non_public_addresses_and_what_they_embed_are_refused(address, expected):
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and expected in reason, (address, reason)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],  # fmt: skip
)
def test_public_addresses_and_forms_embedding_one_are_allowed(address):
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host",
    ["::127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "127.0.0.1", "localhost", "2130706433", "0x7f.1"],
)
def test_registration_check_resolves_literals_and_names(host):
    """What POST /v1/webhooks asks: numeric forms the resolver accepts
    (2130706433 is 127.0.0.1) are judged by the address they resolve to."""
    assert non_public_address(host) is not None


class Receiver(ThreadingHTTPServer):
    """Records the Host header of every POST; listens on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hosts.append(self.headers["Host"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class FakeDns:
    """`hooks.example` answers `answers` in turn (the last one for good) and
    records each answer it gave in `asked`; other names resolve normally."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.asked: list[str] = []
        self._real = socket.getaddrinfo

    def getaddrinfo(self, host, port, *args, **kwargs):
        if host != "hooks.example":
            return self._real(host, port, *args, **kwargs)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        self.asked.append(answer)
        return self._real(answer, port, *args, **kwargs)


@pytest.fixture
def dns(monkeypatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@pytest.fixture
def loopback_is_public(monkeypatch) -> None:
    """Judge 127.0.0.1 public, so that a loopback receiver can stand for a
    customer's public server; every other address keeps its verdict."""
    real = webhooks.refusal
    monkeypatch.setattr(webhooks, "refusal", lambda a: None if str(a) == "127.0.0.1" else real(a))


def test_delivery_connects_to_the_address_it_checked_not_to_a_later_answer(receiver, dns, loopback_is_public):
    """DNS rebinding: the name first answers an allowed address, then another
    one (127.0.0.2, where nothing listens). A client that checked the first
    answer and then resolved again would connect to the second; this one
    resolves once and connects where it checked."""
    dns.answers = ["127.0.0.1", "127.0.0.2"]
    port = receiver.server_address[1]
    with delivery_client(5.0) as client:
        outcome = attempt(client, f"http://hooks.example:{port}/hook", EVENT)
    assert outcome.delivered, outcome
    assert dns.asked == ["127.0.0.1"]  # resolved once
    assert receiver.hosts == [f"hooks.example:{port}"]  # the original Host header


def test_a_name_rebound_to_a_private_address_is_refused_before_connecting(receiver, dns, loopback_is_public):
    """The reverse: the check's own answer is the metadata address (or any
    non-public one). Nothing is sent and the outcome is final."""
    port = receiver.server_address[1]
    for private in ("169.254.169.254", "::ffff:127.0.0.2", "10.0.0.1"):
        dns.answers = [private, "127.0.0.1"]
        with delivery_client(5.0) as client:
            outcome = attempt(client, f"http://hooks.example:{port}/hook", EVENT)
        assert not outcome.delivered and not outcome.retriable, outcome
        assert "not a public address" in outcome.error and private in outcome.error
    assert receiver.hosts == []


def test_a_literal_non_public_url_is_refused_by_the_delivery_client(receiver):
    port = receiver.server_address[1]
    with delivery_client(5.0) as client:
        for host in ("127.0.0.1", "[::ffff:127.0.0.1]", "localhost"):
            outcome = attempt(client, f"http://{host}:{port}/hook", EVENT)
            assert not outcome.delivered and not outcome.retriable and "loopback" in outcome.error, (host, outcome)
    assert receiver.hosts == []


def test_a_name_that_does_not_resolve_is_a_retriable_failure():
    with delivery_client(5.0) as client:
        outcome = attempt(client, "http://name.invalid/hook", EVENT)
    assert not outcome.delivered and outcome.retriable, outcome


def test_allowing_private_urls_gives_a_plain_client(receiver):
    """WEBHOOK_ALLOW_PRIVATE_URLS (development, the tests' stack)."""
    port = receiver.server_address[1]
    with delivery_client(5.0, allow_private=True) as client:
        assert attempt(client, f"http://127.0.0.1:{port}/hook", EVENT).delivered
    assert receiver.hosts == [f"127.0.0.1:{port}"]


def test_proxies_from_the_environment_are_not_used(receiver, monkeypatch):
    """A proxy would resolve the name itself, past the check."""
    port = receiver.server_address[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{port}")
    with delivery_client(5.0) as client:
        outcome = attempt(client, "http://169.254.169.254/latest/meta-data", EVENT)
    assert "not a public address" in (outcome.error or "")
    assert receiver.hosts == []


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[int, list[str]]]:
    """A TLS listener on 127.0.0.1 with a self-signed certificate for
    hooks.example; yields its port and the SNI names clients sent."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hooks.example",
         "-addext", "subjectAltName=DNS:hooks.example", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except OSError:  # ssl.SSLError included: the client refuses our certificate
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], names
    thread.join(10)
    listener.close()


def test_tls_goes_to_the_checked_address_with_the_urls_name_and_verifies_it(tls_server, dns, loopback_is_public):
    """Connecting to the checked IP changes nothing above TCP: SNI is the
    URL's host name, and the certificate is verified against it (this one is
    self-signed, so the try fails, retriably, before anything is sent)."""
    port, names = tls_server
    dns.answers = ["127.0.0.1", "127.0.0.2"]
    with delivery_client(5.0) as client:
        outcome = attempt(client, f"https://hooks.example:{port}/hook", EVENT)
    assert not outcome.delivered and outcome.retriable, outcome
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.error, outcome.error
    assert names == ["hooks.example"]
    assert dns.asked == ["127.0.0.1"]
