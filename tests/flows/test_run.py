"""flows.run: the metrics port each dataflow process gets, and the recovery directory."""

import dataclasses
import multiprocessing

from flows.run import ensure_recovery_dir, metrics_port
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


def test_processes_starting_together_create_the_recovery_partitions_once(tmp_path):
    """A cluster's processes start at once; without the lock two of them
    initialised the same directory and the cluster hung."""
    target = tmp_path / "dataflow-recovery"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        pool.starmap(ensure_recovery_dir, [(target, 3)] * 4)
    assert sorted(p.name for p in target.glob("part-*.sqlite3")) == [f"part-{i}.sqlite3" for i in range(3)]
