"""`meterflow`: run the local system and prepare storage.

    meterflow up       start services, dataflow and API (idempotent)
    meterflow down     stop everything this checkout started
    meterflow status   one line per process
    meterflow init     create topics, tables and the bucket (any environment)
"""

from __future__ import annotations

import argparse
import sys

from meterflow.local import local_stack
from meterflow.log import configure_logging
from meterflow.settings import Settings
from meterflow.stack import StackConfig, StackError
from meterflow.storage import ensure_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meterflow", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "init"])
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    configure_logging(settings.log_level, json=False)
    if args.command == "init":
        ensure_all(settings)
        print("storage ready")
        return 0

    stack = local_stack(StackConfig.from_settings(settings), settings)
    try:
        if args.command == "up":
            stack.start()
            print(f"MeterFlow is up: API http://{settings.api_host}:{settings.api_port} "
                  f"(docs at /docs), data in {settings.data_dir}")
        elif args.command == "down":
            stack.stop()
        for name, status in stack.status().items():
            print(f"{name:<10} {status}")
    except StackError as exc:
        print(f"meterflow: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
