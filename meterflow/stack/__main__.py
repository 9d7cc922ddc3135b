"""`python -m meterflow.stack up|down|status [SERVICE...]`: the bare stack by hand.

Only the four services (no dataflow/API: that is `meterflow up`). Addresses
come from the same environment variables as `meterflow.settings.Settings`.
Exit status: 0 when everything asked for is up (`up`, `status`) or stopped.
"""

from __future__ import annotations

import argparse
import sys
import time

from meterflow.settings import Settings
from meterflow.stack import Stack, StackConfig, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meterflow.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("services", nargs="*", help="only these (default: all)")
    parser.add_argument("--kafka-storage", choices=["memory", "s3"], default="s3",
                        help="Tansu storage: s3 (default, the stack's SeaweedFS; durable) or memory (lost on broker stop)")
    args = parser.parse_args(argv)

    stack = Stack(StackConfig.from_settings(Settings.from_env(), kafka_storage=args.kafka_storage))
    try:
        for name in args.services:
            if name not in stack.names:
                parser.error(f"unknown service {name!r} (known: {', '.join(stack.names)})")
        t0 = time.monotonic()
        if args.command == "up":
            if args.services:
                for name in args.services:
                    stack.start_service(name)
            else:
                stack.start()
            print(f"up in {time.monotonic() - t0:.1f} s, data in {stack.config.data_dir}")
        elif args.command == "down":
            if args.services:
                for name in args.services:
                    stack.stop_service(name)
            else:
                stack.stop()
            print(f"stopped in {time.monotonic() - t0:.1f} s")
        statuses = stack.status()
        shown = args.services or list(statuses)
        for name in shown:
            print(f"{name:<10} {statuses[name]}")
        if args.command == "down":
            return 0 if not any(statuses[n].running for n in shown) else 1
        return 0 if all(statuses[n].healthy for n in shown) else 1
    except StackError as exc:
        print(f"meterflow.stack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
