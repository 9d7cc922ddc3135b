"""A real ClickHouse HTTP server from the `chdb-core` wheel, as one process.

    python -m meterflow.stack.clickhouse_server --dir DATA/clickhouse --port 18123

Why this exists: no ClickHouse server binary can be installed here, but
chdb-core 26.9 embeds ClickHouse 26.9, and recent clickhouse-local can open
network listeners with `SYSTEM START LISTEN` (ClickHouse PR #101143). The
module-level `chdb._chdb.query()` runs it; the listener lives as long as the
query that opened it runs, so the query ends with an endless, row-less
`sleepEachRow` select. The output format given ("TabSeparated") becomes the
HTTP default format ("Null" would break clickhouse-connect).

Caveats (pin `chdb-core==26.9.0`; this rests on an undocumented function):
one process per data directory; no `system.query_log`/`part_log`; user
`default` stays password-less; `KILL QUERY` on the keep-alive query stops
the server (which is exactly how SIGTERM is handled below).

clickhouse-local reads `./config.xml`, so we write one into `--dir` and chdir
there. Table data lives in `--dir/data`; logs in `--dir/server.log` and
`server.err.log` (warnings and up).

Shutdown: on SIGTERM/SIGINT the keep-alive query is killed through the HTTP
port, so the query returns and ClickHouse shuts down normally (about 1 s);
if clients hold keep-alive connections we exit after 1.5 s instead of the
5 s clickhouse-local would wait. Inserted parts are on disk once an INSERT
returns, so even kill -9 loses no acknowledged synchronous insert (async
inserts without wait_for_async_insert may be lost, as on any crash).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

KEEPALIVE_QUERY = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT number FROM system.numbers WHERE sleepEachRow(1) != 0 SETTINGS max_block_size = 1"
)
_KILL_KEEPALIVE = (
    "KILL QUERY WHERE query LIKE 'SELECT number FROM system.numbers WHERE sleepEachRow(1)%' SYNC"
)


def config_xml(directory: Path, port: int, log_level: str = "warning") -> str:
    """clickhouse-local's config: HTTP on loopback only, logs in `directory`.

    Only the HTTP listener is started (`SYSTEM START LISTEN HTTP`), so the
    native TCP, MySQL, PostgreSQL and interserver ports are never opened.
    """
    d = escape(str(directory))
    return f"""<clickhouse>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{int(port)}</http_port>
    <!-- stop at once: an idle keep-alive client would otherwise hold shutdown for 5 s -->
    <shutdown_wait_unfinished>0</shutdown_wait_unfinished>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <logger>
        <level>{escape(log_level)}</level>
        <log>{d}/server.log</log>
        <errorlog>{d}/server.err.log</errorlog>
        <size>50M</size>
        <count>3</count>
        <console>0</console>
    </logger>
</clickhouse>
"""


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} clickhouse_server: {message}", flush=True)


def serve(directory: Path, port: int, log_level: str = "warning") -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    directory = directory.resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    (directory / "config.xml").write_text(config_xml(directory, port, log_level))
    os.chdir(directory)

    try:
        from chdb import _chdb
    except ImportError as exc:
        print(f"clickhouse_server: chdb-core is not installed: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    failure: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def run() -> None:
        # chdb releases the GIL while the query runs, so the main thread stays
        # free to handle signals.
        try:
            _chdb.query(KEEPALIVE_QUERY, "TabSeparated", path=str(directory / "data"))  # type: ignore[attr-defined]
        except Exception as exc:  # e.g. the port is taken, or the query was killed
            failure.append(f"{type(exc).__name__}: {exc}")
        finally:
            stop.set()

    server = threading.Thread(target=run, name="clickhouse", daemon=True)
    server.start()
    _say(f"HTTP on 127.0.0.1:{port}, data in {directory / 'data'}")
    stop.wait()

    if not server.is_alive():  # ended on its own: that is a failure
        print(f"clickhouse_server: server stopped: {failure[0] if failure else 'query returned'}", file=sys.stderr)
        return 1

    _say("stopping")
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=_KILL_KEEPALIVE.encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except OSError as exc:
        print(f"clickhouse_server: could not cancel the keep-alive query: {exc}", file=sys.stderr)
        os._exit(1)
    # Idle shutdown takes ~0.8 s. With a client's keep-alive connection open
    # clickhouse-local waits ~5 s for it and then exits with status 1 from
    # its own thread; every acknowledged insert is already on disk by then,
    # so we do not wait for that.
    server.join(timeout=1.5)
    if server.is_alive():
        _say("stopped (not waiting for idle HTTP connections)")
        os._exit(0)
    _say("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ClickHouse HTTP server (chdb-core) for the native stack")
    parser.add_argument("--dir", type=Path, required=True, help="config, logs; table data in DIR/data")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    parser.add_argument("--log-level", default="warning", help="ClickHouse logger level (default: warning)")
    args = parser.parse_args(argv)
    return serve(args.dir, args.port, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
