"""Closed by default, without services: `python -m api.serve` will not listen
beyond loopback without ADMIN_TOKEN, and which Host headers count as
loopback while admin routes are open. (The same rules against the running
API and Redis: tests/integration/test_admin.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.exposure import host_header_is_loopback, is_loopback

ROOT = Path(__file__).resolve().parent.parent


def serve(**env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m api.serve` with `env` on top of a clean environment."""
    clean = {k: v for k, v in os.environ.items() if k not in ("ADMIN_TOKEN", "API_HOST", "API_PORT")}
    return subprocess.run(
        [sys.executable, "-m", "api.serve"], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "meterflow.example.com"])
def test_the_api_refuses_to_start_open_beyond_loopback_and_says_what_to_set(host):
    result = serve(API_HOST=host, ADMIN_TOKEN="", API_PORT="1")  # port 1: were it to bind, it would fail otherwise
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and "Set ADMIN_TOKEN" in result.stderr, result.stderr
    assert f"API_HOST={host!r}" in result.stderr
    assert "Traceback" not in result.stderr  # one clear line, not a stack trace


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LocalHost"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "::ffff:127.0.0.1", "localhost.", "example.com"])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize(
    "header", ["localhost", "localhost:3000", "127.0.0.1", "127.0.0.1:3000", "[::1]", "[::1]:3000", "LOCALHOST:80"]
)
def test_loopback_host_headers(header):
    assert host_header_is_loopback(header)


@pytest.mark.parametrize(
    "header",
    [None, "", "attacker.example", "attacker.example:3000", "localhost.attacker.example", "localhost:3000:1",
     "localhost:", "localhost:x", "::1", "[::1", "[::1]x", "[::1]:", "[127.0.0.1]", "[localhost]", "127.0.0.1.nip.io",
     "localhost@attacker.example", "0.0.0.0:3000", "[::]:3000"],
)  # fmt: skip
def test_other_host_headers(header):
    assert not host_header_is_loopback(header)
