"""docker-compose.yml is closed by default: only the API is published on
every address, no password or secret is written in the file, and the API
cannot start without ADMIN_TOKEN (issue 12, item 6). Read as data, so a
later edit that opens something fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
PUBLIC_SERVICES = {"api"}  # may listen on every address of the host
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY")
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")  # ${VAR:?message}: compose stops when VAR is unset or empty
OPTIONAL_EMPTY = re.compile(r"\$\{(\w+):-\}")  # ${VAR:-}: empty unless given (an optional integration)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def published(port: str | int | dict[str, Any]) -> tuple[str, str]:
    """(host address, host port) of a `ports` entry; address '' = every one."""
    if isinstance(port, dict):  # long syntax
        return str(port.get("host_ip", "")), str(port.get("published", ""))
    parts = str(port).rsplit(":", 2)
    if len(parts) == 1:
        return "", ""  # container port only: a random host port on every address
    if len(parts) == 2:
        return "", parts[0]
    return parts[0].strip("[]"), parts[1]


def environments(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, variable, value) of every environment entry, anchors merged."""
    found = []
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
        found += [(name, str(key), str(value)) for key, value in env.items()]
    return found


def test_only_the_api_is_published_beyond_loopback(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            address, _ = published(port)
            if name in PUBLIC_SERVICES:
                continue
            assert address in ("127.0.0.1", "::1"), f"{name} publishes {port!r} beyond loopback"
    assert any(published(p)[1] == "3000" for p in compose["services"]["api"]["ports"])


def test_no_password_or_secret_is_written_in_the_file(compose):
    secrets = [(s, k, v) for s, k, v in environments(compose) if SECRET_NAME.search(k)]
    assert len(secrets) >= 6, secrets  # ClickHouse, MinIO, S3, admin token, Stripe, webhooks
    for service, key, value in secrets:
        assert REQUIRED.fullmatch(value) or OPTIONAL_EMPTY.fullmatch(value), (
            f"{service}: {key}={value!r} is a literal or has a default; use ${{VAR:?message}}"
        )
    for service, key, value in environments(compose):
        if key in ("CLICKHOUSE_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_SECRET_KEY"):
            assert REQUIRED.fullmatch(value), f"{service}: {key} must be required, not optional"


def test_the_api_cannot_start_without_an_admin_token(compose):
    api = {key: value for service, key, value in environments(compose) if service == "api"}
    match = REQUIRED.fullmatch(api.get("ADMIN_TOKEN", ""))
    assert match and match.group(1) == "ADMIN_TOKEN", api.get("ADMIN_TOKEN")
    assert {key for service, key, _ in environments(compose) if service != "api"}.isdisjoint({"ADMIN_TOKEN"})


def test_the_file_reads_the_secrets_it_requires_from_the_environment():
    """Every required variable is named in the file's set-up comment, so the
    one-line `.env` recipe there produces all of them."""
    text = COMPOSE.read_text()
    required = set(REQUIRED.findall(text))
    assert required == {"ADMIN_TOKEN", "CLICKHOUSE_PASSWORD", "MINIO_ROOT_PASSWORD"}
    recipe = next(line for line in text.splitlines() if line.startswith("#   for v in"))
    assert set(recipe.split("for v in", 1)[1].split(";")[0].split()) == required
