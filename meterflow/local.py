"""The whole local system as one Stack: the four services plus the dataflow and the API.

`meterflow up` and the integration tests both build it here, so the tests
start the system exactly the way a newcomer does.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

from meterflow.settings import Settings
from meterflow.stack import Stack, StackConfig

DATAFLOW_ARGV = [sys.executable, "-m", "flows.run"]
WEBHOOKS_ARGV = [sys.executable, "-m", "meterflow.webhook_worker"]
BILLING_SCHEDULER_ARGV = [sys.executable, "-m", "meterflow.cli", "billing", "schedule"]
# uvicorn with host, port and workers from the environment (settings.as_env())
API_ARGV = [sys.executable, "-m", "api.serve"]


def http_ok(url: str):
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return check


def dataflow_line(url: str) -> str:
    """`meterflow status`'s line for the dataflow, from its /health (flows.metrics):
    lag and last progress, and whether it is stalled."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            report = json.load(response)
    except OSError as exc:
        return f"progress unknown: {exc}"
    lag = "unknown" if report["lag"] is None else f"{report['lag']:,}"
    line = f"lag {lag}, last progress {report['last_progress_s_ago']:.0f} s ago"
    return f"STALLED: {line}" if report["stalled"] else line


def add_dataflow(stack: Stack, name: str, settings: Settings) -> None:
    """Register a dataflow process configured by `settings`: healthy once its
    /health answers (alive), so a stalled dataflow neither fails `up` nor
    makes it stop what it started; `status` also asks /health/ready (503
    while stalled: UNHEALTHY, exit status 1) and shows its lag and last
    progress. Without a metrics port, alive = healthy."""
    env = {**os.environ, **settings.as_env()}
    if not settings.flow_metrics_port:
        stack.add_process(name, DATAFLOW_ARGV, env=env)
        return
    url = f"http://{settings.flow_metrics_host}:{settings.flow_metrics_port}"
    stack.add_process(
        name, DATAFLOW_ARGV, env=env, health=http_ok(f"{url}/health"), port=settings.flow_metrics_port,
        ready=http_ok(f"{url}/health/ready"), describe=lambda: dataflow_line(f"{url}/health"),
    )  # fmt: skip


def local_stack(config: StackConfig, settings: Settings) -> Stack:
    """Services from `config`, apps configured by `settings` (which must point at them)."""
    stack = Stack(config)
    env = {**os.environ, **settings.as_env()}
    add_dataflow(stack, "dataflow", settings)
    # Always: customers' endpoints need it whether or not ALERT_WEBHOOK_URL is set.
    stack.add_process("webhooks", WEBHOOKS_ARGV, env=env)
    stack.add_process(
        "api",
        API_ARGV,
        env=env,
        health=http_ok(f"http://{settings.api_host}:{settings.api_port}/health"),
        port=settings.api_port,
    )
    if settings.billing_scheduler:
        stack.add_process("billing", BILLING_SCHEDULER_ARGV, env=env)
    return stack
