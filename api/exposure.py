"""Closed by default: where admin routes may be open without ADMIN_TOKEN.

Kept apart from api.main and api.deps, which import the whole application:
`python -m api.serve` checks the settings here before starting uvicorn,
and its worker processes re-import that module, so it must stay light (a
worker that takes long to import is taken for dead by uvicorn).
"""

from __future__ import annotations

import ipaddress

from meterflow.settings import Settings


def is_loopback(host: str) -> bool:
    """`host` (a name or an address, IPv6 without brackets) is this machine's
    loopback: `localhost`, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_header_is_loopback(value: str | None) -> bool:
    """A Host header (`name`, `name:port`, `[v6]`, `[v6]:port`) naming loopback.

    A page that reaches the API through DNS rebinding is served from its own
    name (attacker.example, now resolving to 127.0.0.1), and the browser
    sends that name: it can never send `localhost`.
    """
    if not value:
        return False
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or ":" not in host:
            return False  # brackets hold a whole IPv6 address only
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
    return (rest == "" or (rest[:1] == ":" and rest[1:].isdigit())) and is_loopback(host)


# Headers a reverse proxy adds: a request carrying one came from elsewhere,
# even though the proxy connected over loopback and may name loopback in Host.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


class AdminExposed(Exception):
    """The API would serve open admin routes beyond this machine."""


def check_admin_exposure(settings: Settings) -> None:
    """Refuse an API without ADMIN_TOKEN on a non-loopback API_HOST: anyone
    who reached it could mint a key for any customer."""
    if not settings.admin_token and not is_loopback(settings.api_host):
        raise AdminExposed(
            f"ADMIN_TOKEN is not set and API_HOST={settings.api_host!r} is not a loopback address, so anyone "
            "who reaches the API could create API keys for any customer. Set ADMIN_TOKEN to a long random "
            "secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
            "or set API_HOST=127.0.0.1."
        )
