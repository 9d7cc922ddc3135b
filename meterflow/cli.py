"""`meterflow`: run the local system and prepare storage.

    meterflow up [NAME ...]      start services, dataflow and API (idempotent), or only NAMEs
    meterflow down [NAME ...]    stop everything this checkout started, or only NAMEs
    meterflow status [NAME ...]  one line per process
    meterflow init               create topics, tables and the bucket (any environment)

NAMEs: redis, kafka, clickhouse, s3, dataflow, api. Exit status is 0 when
what was asked for is healthy (up, status) or stopped (down).
"""

from __future__ import annotations

import argparse
import sys
import time

from meterflow.local import local_stack
from meterflow.log import configure_logging
from meterflow.settings import Settings
from meterflow.stack import StackConfig, StackError
from meterflow.storage import ensure_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="meterflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "init"])
    parser.add_argument("names", nargs="*", help="only these processes (default: all)")
    parser.add_argument(
        "--kafka-storage",
        choices=["s3", "memory"],
        default="s3",
        help="where the native broker keeps its log: s3 (durable, default) or memory",
    )
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    configure_logging(settings.log_level, json=False)
    if args.command == "init":
        ensure_all(settings)
        print("storage ready")
        return 0

    stack = local_stack(StackConfig.from_settings(settings, kafka_storage=args.kafka_storage), settings)
    unknown = [name for name in args.names if name not in stack.names]
    if unknown:
        parser.error(f"unknown process {unknown[0]!r} (known: {', '.join(stack.names)})")
    # In the stack's own order, whatever the order given (s3 before kafka, ...).
    names = [name for name in stack.names if name in args.names]
    started = time.monotonic()
    try:
        if args.command == "up":
            for name in names:
                stack.start_service(name)
            if not names:
                stack.start()
            what = ", ".join(names) if names else (
                f"MeterFlow, API http://{settings.api_host}:{settings.api_port} (docs at /docs)"
            )
            print(f"up in {time.monotonic() - started:.1f} s: {what}; data in {settings.data_dir}")
        elif args.command == "down":
            for name in reversed(names):
                stack.stop_service(name)
            if not names:
                stack.stop()
        statuses = stack.status()
        shown = names or list(statuses)
        for name in shown:
            print(f"{name:<10} {statuses[name]}")
    except StackError as exc:
        print(f"meterflow: {exc}", file=sys.stderr)
        return 1
    if args.command == "down":
        return 0 if not any(statuses[name].running for name in shown) else 1
    return 0 if all(statuses[name].healthy for name in shown) else 1


if __name__ == "__main__":
    sys.exit(main())
