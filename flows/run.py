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
    """Create the recovery partitions unless they exist (a restart keeps them)."""
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


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    ensure_recovery_dir(recovery_dir(settings), settings.recovery_partitions)
    argv = bytewax_argv(settings, sys.argv[1:] if argv is None else argv)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
