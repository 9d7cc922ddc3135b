"""Signed webhook attempts, the retry policy, and dead letters.

A receiver can trust and deduplicate what it gets:

- `X-MeterFlow-Signature: t=<unix s>,v1=<hex>` where hex is
  HMAC-SHA256(secret, "<t>.<body>"), as Stripe signs its webhooks (the
  timestamp lets receivers refuse replays of old deliveries);
- `X-MeterFlow-Event-Id` is the same on every retry of one event, so a
  receiver that sees it twice can drop the second.

Retries: connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff up to `attempts` tries; any other answer is final. An
event that was never accepted is kept as a dead letter (Redis list
`webhook:dead`, newest first), never dropped silently.

`attempt` (one POST, classified) and `RetryPolicy.retry_after` (what to do
next) are the whole delivery logic: the outbox worker
(meterflow.webhook_outbox) runs one attempt per claim and leaves the
waiting to its schedule, so no sender ever sleeps on one endpoint.

Where deliveries may go: a customer's URL must not make MeterFlow POST into
its own network. `refusal` judges one address (IPv6 forms that embed an
IPv4 address by what they embed), and `delivery_client` checks every
address where the socket connects, so the address checked is the address
used (see PublicOnlyBackend).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import httpcore
import httpx
import orjson
import redis
import structlog

from meterflow.settings import Settings

log = structlog.get_logger(__name__)

DEAD_LETTERS_KEY = "webhook:dead"
SIGNATURE_HEADER = "X-MeterFlow-Signature"
EVENT_ID_HEADER = "X-MeterFlow-Event-Id"
EVENT_TYPE_HEADER = "X-MeterFlow-Event-Type"
RETRIABLE_STATUS = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    event_type: str  # e.g. "alert.triggered"
    body: bytes  # JSON


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one POST."""

    delivered: bool
    retriable: bool  # worth another try (connection error, timeout, 408, 429, 5xx)
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(settings.webhook_attempts, settings.webhook_first_backoff_s, settings.webhook_max_backoff_s)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed try number `attempt` (1-based): doubling, capped."""
        return min(self.first_backoff_s * 2 ** (attempt - 1), self.max_backoff_s)

    def retry_after(self, attempt: int, outcome: Attempt) -> float | None:
        """Seconds until the next try after try number `attempt`, or None when
        `outcome` is final: delivered, refused for good, or the last try."""
        if outcome.delivered or not outcome.retriable or attempt >= self.attempts:
            return None
        return self.backoff_s(attempt)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does with the signature header (also used by tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses to connect to, in order; socket.getaddrinfo by default.
Resolver = Callable[[str, int], list[str]]

_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d, deprecated by RFC 4291
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the well-known prefix, to any public IPv4
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_TEREDO = ipaddress.ip_network("2001::/32")


class NonPublicAddress(Exception):
    """A webhook target resolved to an address MeterFlow must not connect to."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address} ({reason}), which is not a public address")
        self.address = address
        self.reason = reason


def _plain_refusal(address: IPAddress) -> str | None:
    """Why `address`, taken at face value, is not public; None if it is."""
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (getattr(address, "is_site_local", False), "site-local"),  # IPv6 only
        (address.is_private, "private"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def refusal(address: IPAddress) -> str | None:
    """Why MeterFlow must not POST to `address`, or None for a public one.

    `is_global` alone is not enough: Python 3.11 calls multicast, site-local
    and several IPv6 forms that carry an IPv4 address global. Those forms
    reach the IPv4 address they embed (a dual-stack socket, a NAT64 gateway,
    a 6to4 relay), so that address is judged too: `[::ffff:127.0.0.1]`,
    `[64:ff9b::a9fe:a9fe]` (NAT64 to 169.254.169.254) and
    `[2002:a9fe:a9fe::]` (6to4) are as private as what they embed. Forms no
    webhook needs (IPv4-compatible, local-use NAT64, Teredo) are refused
    whatever they embed.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _plain_refusal(address)
    address = ipaddress.IPv6Address(int(address))  # without a %scope
    if address.ipv4_mapped is not None:
        embedded = _plain_refusal(address.ipv4_mapped)
        return f"IPv4-mapped {address.ipv4_mapped}: {embedded}" if embedded else None
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return f"IPv4-compatible (deprecated), embeds {ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)}"
    if address in _NAT64:
        target = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        embedded = _plain_refusal(target)
        return f"NAT64 to {target}: {embedded}" if embedded else None
    if address in _NAT64_LOCAL:
        return "local-use NAT64 (64:ff9b:1::/48)"
    if address in _TEREDO:
        return "Teredo (2001::/32)"
    if address.sixtofour is not None:
        embedded = _plain_refusal(address.sixtofour)
        return f"6to4 of {address.sixtofour}: {embedded}" if embedded else None
    return _plain_refusal(address)


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, once each."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def public_addresses(host: str, port: int, resolver: Resolver = resolve) -> list[str]:
    """The addresses of `host`, resolved once; NonPublicAddress when any of
    them is not public (a name that also points inside is not trusted)."""
    addresses = resolver(host, port)
    for text in addresses:
        reason = refusal(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason is not None:
            raise NonPublicAddress(host, text, reason)
    return addresses


def non_public_address(host: str) -> str | None:
    """An address `host` resolves to that is not public, with the reason, or
    None. What registration checks; a name that does not resolve is None
    here: its deliveries then fail and are retried, and are checked again."""
    try:
        public_addresses(host, 0)
    except NonPublicAddress as exc:
        return f"{exc.address} ({exc.reason})"
    except (OSError, UnicodeError):
        return None
    return None


class PublicOnlyBackend(httpcore.NetworkBackend):
    """Connects only to public addresses, and to the very address it checked.

    Checking a name and then letting the HTTP client resolve it again leaves
    a window in which DNS can change its answer (DNS rebinding). Here the
    name is resolved once per connection, every address is checked, and the
    socket is opened to a checked address. TLS still verifies the URL's host
    name and sends it as SNI, and the Host header is the URL's (httpcore
    does both above this layer).
    """

    def __init__(self, resolver: Resolver = resolve) -> None:
        self._resolver = resolver
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = public_addresses(host, port, self._resolver)
        except (OSError, UnicodeError) as exc:  # does not resolve: a retriable connect error
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        failure: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in addresses:
            try:
                return self._tcp.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    def sleep(self, seconds: float) -> None:
        self._tcp.sleep(seconds)


def delivery_client(timeout_s: float, allow_private: bool = False, resolver: Resolver = resolve) -> httpx.Client:
    """The HTTP client for customers' endpoints: it connects to public
    addresses only, unless `allow_private` (WEBHOOK_ALLOW_PRIVATE_URLS).

    httpx offers no setting for the network backend, so the transport's
    connection pool is replaced by one that uses PublicOnlyBackend (the
    tests in tests/test_webhook_ssrf.py fail if an httpx release changes
    that). No proxy from the environment either: a proxy would resolve the
    name itself, out of this check's reach.
    """
    if allow_private:
        return httpx.Client(timeout=timeout_s)
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001 - see the docstring
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=PublicOnlyBackend(resolver),
    )
    return httpx.Client(timeout=timeout_s, transport=transport, trust_env=False)


def attempt(client: httpx.Client, url: str, event: WebhookEvent, secret: str = "") -> Attempt:
    """POST `event` to `url` once, freshly signed (unsigned when `secret` is empty).

    The response body is never read: only the status counts, and a receiver
    must not be able to make the sender buffer an endless answer.
    """
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id, EVENT_TYPE_HEADER: event.event_type}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), event.body)
    try:
        with client.stream("POST", url, content=event.body, headers=headers) as response:
            status = response.status_code
    except httpx.InvalidURL as exc:  # no later try can fix the address
        return Attempt(False, False, None, f"InvalidURL: {exc}")
    except NonPublicAddress as exc:  # final: nothing was sent
        return Attempt(False, False, None, str(exc))
    except httpx.HTTPError as exc:
        return Attempt(False, True, None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Attempt(True, False, status)
    return Attempt(False, status >= 500 or status in RETRIABLE_STATUS, status, f"HTTP {status}")


def dead_letter(
    client: redis.Redis,
    url: str,
    event: WebhookEvent,
    result: DeliveryResult,
    endpoint_id: str,
    customer_id: str,
) -> None:
    """Keep an event no try got accepted. `client` may be a pipeline, so the
    letter can be written in one transaction with the delivery's final state."""
    record = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "endpoint_id": endpoint_id,
        "customer_id": customer_id,
        "url": url,
        "attempts": result.attempts,
        "status": result.status,
        "error": result.error,
        "failed_at": int(time.time() * 1000),
        "body": event.body.decode(),
    }
    client.lpush(DEAD_LETTERS_KEY, orjson.dumps(record))
    log.error(
        "webhook_dead_letter",
        event_id=event.event_id,
        endpoint_id=endpoint_id,
        url=url,
        attempts=result.attempts,
        error=result.error,
    )
