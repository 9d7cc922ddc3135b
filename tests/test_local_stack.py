"""Which processes `meterflow up` runs, from the settings alone, and what
`up` and `status` do with a stalled dataflow (a stand-in process, no services)."""

import re
import sys
from pathlib import Path

from meterflow import local
from meterflow.cli import main
from meterflow.local import local_stack
from meterflow.settings import Settings
from meterflow.stack import StackConfig, free_port


def names(settings: Settings, tmp_path: Path) -> list[str]:
    return list(local_stack(StackConfig.ephemeral(tmp_path), settings).names)


def test_billing_scheduler_runs_only_when_asked_for(tmp_path):
    assert "billing" not in names(Settings(data_dir=tmp_path), tmp_path)
    with_scheduler = names(Settings(data_dir=tmp_path, billing_scheduler=True), tmp_path)
    assert {"dataflow", "webhooks", "api", "billing"} <= set(with_scheduler)


# A stand-in for the dataflow that is alive and stalled: its own /health
# and /health/ready (flows.metrics) over a partition with a backlog of 10
# that has not moved for 100 s, on FLOW_METRICS_PORT as the real one.
STALLED_DATAFLOW = """
import os
from wsgiref.simple_server import make_server
from prometheus_client import REGISTRY, make_wsgi_app
from flows import metrics

now = [0.0]
progress = metrics.Progress(1.0, clock=lambda: now[0], wall=lambda: now[0])
progress.assigned("events.raw", 0, 0)
progress.observe("events.raw", 0, (0, 10))
now[0] = 100.0
progress.observe("events.raw", 0, (0, 10))
app = metrics.health_app(progress.report, make_wsgi_app(REGISTRY))
make_server("127.0.0.1", int(os.environ["FLOW_METRICS_PORT"]), app).serve_forever()
"""


def test_a_stalled_dataflow_fails_status_but_not_up_which_stops_nothing(tmp_path, monkeypatch, capsys):
    settings = Settings(data_dir=tmp_path, flow_metrics_port=free_port())
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(local, "DATAFLOW_ARGV", [sys.executable, "-c", STALLED_DATAFLOW])

    def dataflow_line(command: str) -> tuple[int, str]:
        code = main([command, "dataflow"])
        [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dataflow ")]
        return code, line

    try:
        code, first = dataflow_line("up")
        assert code == 0, first  # started and alive: `up` neither fails nor stops it
        pid = re.search(r"pid (\d+)", first).group(1)
        code, again = dataflow_line("up")  # scripts/up.sh run again
        assert code == 0 and f"pid {pid}" in again  # a no-op for what runs
        code, status = dataflow_line("status")
        assert code == 1  # the stall is what `meterflow status` reports
        assert "UNHEALTHY" in status and f"pid {pid}" in status
        assert "(STALLED: lag 10, last progress 100 s ago)" in status
    finally:
        main(["down", "dataflow"])
