"""flows.run: the metrics port each dataflow process gets."""

import dataclasses

from flows.run import metrics_port
from meterflow.settings import Settings

BASE = Settings(flow_metrics_port=19464)


def test_a_single_process_serves_on_the_configured_port(monkeypatch):
    monkeypatch.delenv("BYTEWAX_PROCESS_ID", raising=False)
    assert metrics_port(BASE, []) == 19464
    assert metrics_port(BASE, ["-w", "2"]) == 19464


def test_process_n_serves_on_port_plus_n(monkeypatch):
    monkeypatch.delenv("BYTEWAX_PROCESS_ID", raising=False)
    assert metrics_port(BASE, ["-i", "2", "-a", "h:2101;h:2102;h:2103"]) == 19466
    assert metrics_port(BASE, ["--process-id=1", "-a", "h:2101;h:2102"]) == 19465
    monkeypatch.setenv("BYTEWAX_PROCESS_ID", "3")
    assert metrics_port(BASE, ["-a", "x"]) == 19467


def test_port_zero_stays_off(monkeypatch):
    monkeypatch.setenv("BYTEWAX_PROCESS_ID", "3")
    assert metrics_port(dataclasses.replace(BASE, flow_metrics_port=0), ["-i", "3"]) == 0
