"""Start the events dataflow with Bytewax recovery::

    python -m flows.run [more python -m bytewax.run options, e.g. -i/-a]

Bytewax keeps operator state (the detectors) and the Kafka source's
offsets in SQLite partitions under `<data_dir>/dataflow-recovery`,
snapshotted every `snapshot_interval_s`. The partitions must be created
once, and creating them twice is an error, so this creates them on first
start and then hands the process over to `python -m bytewax.run` (same
pid, so a supervisor's signals reach the dataflow itself).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

import structlog
from bytewax.recovery import init_db_dir

from meterflow.log import configure_logging
from meterflow.settings import Settings

log = structlog.get_logger(__name__)

FLOW = "flows.events:build_flow()"


def recovery_dir(settings: Settings) -> Path:
    return settings.data_dir / "dataflow-recovery"


def ensure_recovery_dir(path: Path, partitions: int) -> None:
    """Create the recovery partitions unless they exist (a restart keeps them).

    The processes of a cluster (-i/-a) start together and share the
    directory; a file lock makes exactly one of them create it (two at once
    left the cluster stuck without an error).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(path.glob("part-*.sqlite3")):
            return
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, partitions)
        log.info("recovery_partitions_created", path=str(path), partitions=partitions)


def bytewax_argv(settings: Settings, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "bytewax.run", FLOW,
        "-r", str(recovery_dir(settings)),
        "-s", str(settings.snapshot_interval_s),
        # No external copies of the partitions are taken, so no older
        # snapshots need keeping.
        "-b", "0",
        *(extra or ["-w", str(settings.flow_workers)]),
    ]  # fmt: skip


def metrics_port(settings: Settings, extra: list[str]) -> int:
    """Process N of a multi-process dataflow (`-i N`, or BYTEWAX_PROCESS_ID)
    serves its metrics on FLOW_METRICS_PORT + N, so processes on one host
    do not compete for one port (0 stays off)."""
    if not settings.flow_metrics_port:
        return 0
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--process-id", type=int, default=int(os.environ.get("BYTEWAX_PROCESS_ID") or 0))
    process_id = parser.parse_known_args(extra)[0].process_id
    return settings.flow_metrics_port + process_id


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    ensure_recovery_dir(recovery_dir(settings), settings.recovery_partitions)
    extra = sys.argv[1:] if argv is None else argv
    os.environ["FLOW_METRICS_PORT"] = str(metrics_port(settings, extra))
    argv = bytewax_argv(settings, extra)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
