"""`meterflow`: run the local system and prepare storage.

    meterflow up [NAME ...]      start services, dataflow and API (idempotent), or only NAMEs
    meterflow down [NAME ...]    stop everything this checkout started, or only NAMEs
    meterflow status [NAME ...]  one line per process (the dataflow's with its lag and last progress)
    meterflow init               create topics, tables and the bucket (any environment)
    meterflow simulate history|fraud|spike [options]
                                 send simulated traffic (docs/simulation.md; --help per kind)
    meterflow replay --from DAY [--to DAY] [--customer ID]
                                 replay backed-up events of UTC days through the dataflow
    meterflow billing run|schedule|reconcile [options]
                                 close billing periods, or compare them with Stripe (docs/billing.md)

NAMEs: redis, kafka, clickhouse, s3, dataflow, webhooks, api, and billing
with BILLING_SCHEDULER=true. Exit status is 0 when what was asked for is
healthy (up, status; for status also not stalled) or stopped (down).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import date

from meterflow import sender, simulate
from meterflow.local import local_stack
from meterflow.replay import replay
from meterflow.log import configure_logging
from meterflow.settings import Settings
from meterflow.stack import StackConfig, StackError
from meterflow.storage import ensure_all


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        return simulate_main(argv[1:])
    if argv[:1] == ["replay"]:
        return replay_main(argv[1:])
    if argv[:1] == ["billing"]:
        return billing_main(argv[1:])
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
    if args.command == "up":  # started and alive; a stall shows in its line, not as a failed `up`
        return 0 if all(statuses[name].healthy for name in shown) else 1
    return 0 if all(statuses[name].healthy and statuses[name].ready for name in shown) else 1


def replay_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="meterflow replay",
        description="Replay events from the S3 backup through the dataflow; totals do not change "
        "(see docs/operations.md).",
    )
    parser.add_argument("--from", dest="first", type=date.fromisoformat, required=True, help="first UTC day")
    parser.add_argument("--to", dest="last", type=date.fromisoformat, help="last UTC day (default: --from)")
    parser.add_argument("--customer", help="only this customer's events")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level, json=False)
    try:
        result = replay(settings, args.first, args.last or args.first, args.customer)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"replayed {result.events} events from {result.objects} backup objects over {result.days} days")
    return 0


def billing_main(argv: list[str]) -> int:
    # Imported here: the billing commands need the API's modules, the others do not.
    from api.billing import PeriodOpen
    from api.billing_job import BillingJob, JobBusy, job_report_json, report_lines, run_scheduler
    from api.deps import Clients
    from api.errors import ServiceUnavailable, UpstreamRefused
    from api.reconcile import reconcile
    from operators.periods import BillingPeriod

    def period_arg(text: str) -> BillingPeriod:
        try:
            return BillingPeriod.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parser = argparse.ArgumentParser(
        prog="meterflow billing",
        description="Billing operations (docs/billing.md). Closing a period is live only with STRIPE_API_KEY: "
        "without it, or with --dry-run, `run` and `schedule` change nothing and report what they would do.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    period_help = "YYYY-MM (month 01-12) or YYYY-MM-DD..YYYY-MM-DD (UTC days); default: the last full month"
    dry_help = "change nothing (no invoice, PDF, webhook or Stripe call): report what a live run would do; " \
        "always the case without STRIPE_API_KEY"  # fmt: skip
    live_rule = "Live only with STRIPE_API_KEY; without it, or with --dry-run, nothing is changed and the " \
        "report says what a live run would do."  # fmt: skip
    run = commands.add_parser(
        "run", help="close a period: invoices, PDFs, webhooks, Stripe (needs STRIPE_API_KEY); safe to repeat",
        description=f"Close a period for every customer with usage (or only --customer). {live_rule}",
    )  # fmt: skip
    run.add_argument("--period", type=period_arg, help=period_help)
    run.add_argument("--customer", action="append", help="only this customer (repeatable)")
    run.add_argument("--dry-run", action="store_true", help=dry_help)
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    schedule = commands.add_parser(
        "schedule", help="run until stopped, closing each month when its grace ends",
        description=f"Every BILLING_SCHEDULER_INTERVAL_S, close the last month once its grace has ended. {live_rule}",
    )  # fmt: skip
    schedule.add_argument("--dry-run", action="store_true", help=dry_help)
    check = commands.add_parser("reconcile", help="compare a period's invoices with Stripe (live mode)")
    check.add_argument("--period", type=period_arg, help=period_help)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    configure_logging(settings.log_level, json=False)
    clients = Clients.connect(settings)
    period = getattr(args, "period", None) or BillingPeriod.month_before(int(time.time() * 1000))
    try:
        if args.command == "schedule":
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            run_scheduler(clients, stop, settings.billing_scheduler_interval_s, dry_run=args.dry_run)
            return 0
        if args.command == "reconcile":
            result = reconcile(clients, period)
            print("\n".join(result.lines()))
            return 1 if result.differences else 0
        job = BillingJob(clients, dry_run=args.dry_run)
        report = job.run(period, customers=set(args.customer) if args.customer else None)
    except (PeriodOpen, JobBusy, ValueError) as exc:
        print(f"meterflow billing: {exc}", file=sys.stderr)
        return 1
    except (ServiceUnavailable, UpstreamRefused) as exc:
        print(f"meterflow billing: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        clients.close()
    print(job_report_json(report) if args.json else "\n".join(report_lines(report)))
    return 0 if report.ok else 1


def mix_arg(text: str) -> dict[str, float]:
    """`--populations`: a mix of customer populations (simulate.parse_mix)."""
    try:
        return simulate.parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def simulate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterflow simulate", description="Send simulated traffic (see docs/simulation.md)."
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--customers", type=int, default=10, help="population sim-0001 ... (default 10)")
    common.add_argument("--events-per-day", type=float, default=200.0, help="median weekday volume")
    common.add_argument("--event-type", default="api_request", choices=["api_request", "storage", "compute"])
    common.add_argument("--seed", type=int, default=42, help="same seed, same traffic and transaction ids")
    common.add_argument("--prefix", default="sim", help="customer ids are PREFIX-0001 ...")
    common.add_argument(
        "--populations", type=mix_arg, default={"office": 1.0}, metavar="NAME[:WEIGHT],...",
        help=f"customer populations and weights, of {','.join(simulate.POPULATIONS)} (default office)",
    )  # fmt: skip
    common.add_argument("--via", choices=["api", "kafka"], default="api", help="/v1/events or events.raw")
    common.add_argument("--api-url", help="default: http://API_HOST:API_PORT")
    common.add_argument(
        "--batch-size", type=int, default=sender.MAX_BATCH, help="per request (at most 1000) or produce"
    )
    history = kinds.add_parser("history", parents=[common], help="ordinary traffic of the last DAYS days")
    history.add_argument("--days", type=int, default=30, help="up to today; fills D-28 .. D-3 at most")
    targeted = argparse.ArgumentParser(add_help=False, parents=[common])
    targeted.add_argument("--targets", type=int, nargs="+", default=[1], help="customer numbers (default 1)")
    kinds.add_parser("fraud", parents=[targeted], help="a stolen key: a day's volume at night")
    spike = kinds.add_parser("spike", parents=[targeted], help="a runaway integration in the last full hour")
    spike.add_argument("--factor", type=float, default=20.0, help="times the usual busy-hour volume")
    return parser


def simulate_main(argv: list[str]) -> int:
    parser = simulate_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level, json=False)
    now_ms = int(time.time() * 1000)
    profiles = simulate.make_profiles(
        args.customers, args.seed, args.events_per_day, args.prefix, args.populations, simulate.utc_today(now_ms)
    )
    if args.kind != "history":
        if not all(1 <= n <= args.customers for n in args.targets):
            parser.error(f"--targets are customer numbers from 1 to {args.customers}")
        profiles = [profiles[n - 1] for n in args.targets]
    try:
        traffic = simulate.scenario(
            args.kind, profiles, now_ms, args.seed, args.event_type,
            days=getattr(args, "days", 0), factor=getattr(args, "factor", 0.0),
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    for incident in traffic.incidents:
        print(f"incident: {incident.describe()}")
    for look_alike in traffic.benign:
        print(f"benign: {look_alike.describe()}")
    try:
        report = sender.send(traffic, args.via, settings, args.api_url, args.batch_size, args.kind)
    except sender.SendError as exc:
        print(f"meterflow simulate: {exc}", file=sys.stderr)
        return 1
    print(f"{args.kind}: {len(traffic.counts())} customers, {report.summary()}")
    for transaction_id, reason in report.failures:
        print(f"  refused {transaction_id}: {reason}")
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
