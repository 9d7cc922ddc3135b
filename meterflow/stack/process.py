"""One managed background process: pid file, log file, start, health, stop.

Why it is built this way:

* The machines are shared with other work, so we only ever signal processes
  we can prove are ours. Every child gets an environment variable
  `METERFLOW_STACK_PROCESS=<data_dir>/<name>`; a pid file only counts when the
  process it names is alive *and* carries that marker in
  `/proc/<pid>/environ` (or, if it rewrote its environment block, has the
  kernel start time recorded at spawn in `<name>.json`). A recycled pid, or
  a pid file copied from another checkout, is therefore "stale", never a
  target for `kill`.
* "Dead" means the whole thread group is gone: a Go program (SeaweedFS)
  shows as a zombie while its other threads still hold its ports, so a
  quick restart would otherwise find them taken.
* Each child runs in its own session (`start_new_session=True`): it outlives
  the CLI that started it, and `stop()` can signal the whole process group
  (uvicorn workers, anything the child forks).
* Before starting, each port is test-bound: a port held by a stranger is a
  clear error instead of a service that dies with "address in use" in a log
  nobody reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from meterflow.stack.config import HOST

MARKER_ENV = "METERFLOW_STACK_PROCESS"
_POLL_S = 0.05
_LOG_TAIL_LINES = 40


class StackError(RuntimeError):
    """A service could not be started, checked or stopped; the message says why."""


HealthCheck = Callable[[], bool]


@dataclass(frozen=True)
class Launch:
    """What to execute; built only at start time (binary lookups may fail)."""

    argv: Sequence[str]
    env: Mapping[str, str] | None = None  # layered over os.environ
    cwd: Path | None = None
    unset_env: Sequence[str] = ()  # variables removed from the inherited environment


@dataclass(frozen=True)
class ProcessSpec:
    """A process the stack manages.

    `port` is the one shown in status; `ports` are all the ports it binds
    (all are checked before start). `health` returns True once the service
    answers; None means "the port accepts connections" when there is a port,
    otherwise "the process is alive".
    """

    name: str
    launch: Callable[[], Launch]
    port: int | None = None
    ports: tuple[int, ...] = ()
    health: HealthCheck | None = None
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    #: A process with neither health check nor port must stay alive this
    #: long to count as started (so a crash on startup is reported).
    min_uptime_s: float = 1.0
    #: The polite stop signal; SIGKILL follows after `stop_timeout_s`.
    stop_signal: signal.Signals = signal.SIGTERM
    #: Files whose tails explain a failed start besides the process's own log.
    extra_logs: tuple[Path, ...] = field(default=())
    #: Cleanup once the process is gone (e.g. sockets it leaves behind).
    after_stop: Callable[[], None] | None = None
    #: One line about a running process's own state for `status` (e.g. the
    #: dataflow's lag and last progress); an exception means "nothing to say".
    describe: Callable[[], str] | None = None
    #: Whether a healthy process also does its work (the dataflow: not
    #: stalled); only `status` asks. Starting waits for `health` alone, so a
    #: live but stalled dataflow neither fails `up` nor makes it stop what it
    #: started. None: healthy is enough. An exception means "not ready".
    ready: HealthCheck | None = None

    @property
    def bound_ports(self) -> tuple[int, ...]:
        ports = tuple(self.ports)
        if self.port is not None and self.port not in ports:
            ports = (self.port, *ports)
        return ports


# Children spawned by this Python process: polling them reaps zombies, which
# would otherwise look alive to kill(pid, 0) until the parent exits.
_children: dict[int, subprocess.Popen[bytes]] = {}


class ManagedProcess:
    """The files and the process of one `ProcessSpec` under `data_dir/<name>/`."""

    def __init__(self, spec: ProcessSpec, data_dir: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.dir = data_dir / spec.name
        self.pid_file = self.dir / f"{spec.name}.pid"
        self.log_file = self.dir / f"{spec.name}.log"
        self.meta_file = self.dir / f"{spec.name}.json"
        self.marker = str(data_dir / spec.name)
        self.last_health_error: str | None = None

    # -- state ---------------------------------------------------------------

    def recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """Our live pid, or None (no pid file, dead process, or not ours).

        Ours means: the process carries our marker in its environment, or,
        for programs that overwrite their environment block to change their
        title (redis does by default, so can setproctitle), it carries no
        marker at all but its kernel start time equals the one recorded at
        spawn, which a recycled pid cannot match.
        """
        pid = self.recorded_pid()
        if pid is None or not _alive(pid):
            return None
        marker = _marker_of(pid)
        if marker is not None:
            return pid if marker == self.marker else None
        started = _start_ticks(pid)
        return pid if started is not None and started == self._recorded_start_ticks(pid) else None

    def _recorded_start_ticks(self, pid: int) -> int | None:
        try:
            meta = json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("pid") != pid:
            return None
        ticks = meta.get("start_ticks")
        return ticks if isinstance(ticks, int) else None

    def recorded_ports(self) -> list[int] | None:
        try:
            return list(json.loads(self.meta_file.read_text())["ports"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def healthy(self) -> bool:
        """Run the health check once; an exception means "not (yet) healthy"."""
        check = self.spec.health
        self.last_health_error = None
        try:
            if check is not None:
                return bool(check())
            if self.spec.port is not None:
                return port_accepts(self.spec.port)
            return self.pid() is not None
        except Exception as exc:
            self.last_health_error = f"{type(exc).__name__}: {exc}"
            return False

    def is_ready(self) -> bool:
        """Run the readiness check once (True without one); an exception means
        "not ready" and is kept in `last_health_error`."""
        check = self.spec.ready
        if check is None:
            return True
        try:
            return bool(check())
        except Exception as exc:
            self.last_health_error = f"{type(exc).__name__}: {exc}"
            return False

    # -- start ---------------------------------------------------------------

    def check_ports_free(self) -> None:
        for port in self.spec.bound_ports:
            if port_in_use(port):
                owner = port_owner(port)
                if owner:
                    who = f" (pid {owner[0]}, {owner[1]})"
                else:
                    who = " (no listener found: probably the local end of a client connection)"
                raise StackError(
                    f"port {port} for {self.name} is in use by another process{who}; "
                    f"stop it or choose another port"
                )

    def spawn(self) -> int:
        """Start the process detached, record its pid; does not wait for health."""
        launch = self.spec.launch()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        env = dict(os.environ)
        for key in launch.unset_env:
            env.pop(key, None)
        env.update(launch.env or {})
        env[MARKER_ENV] = self.marker
        with open(self.log_file, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} meterflow.stack starting {self.name}: {' '.join(launch.argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(launch.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=launch.cwd or self.dir,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise StackError(f"cannot start {self.name} ({launch.argv[0]}): {exc}") from exc
        _children[proc.pid] = proc
        _write_atomic(self.pid_file, f"{proc.pid}\n")
        meta = {
            "pid": proc.pid,
            "argv": list(launch.argv),
            "port": self.spec.port,
            "ports": list(self.spec.bound_ports),
            "started_at": time.time(),
            "start_ticks": _start_ticks(proc.pid),
        }
        _write_atomic(self.meta_file, json.dumps(meta, indent=1) + "\n")
        return proc.pid

    def wait_healthy(self, pid: int, deadline: float, fresh: bool = True) -> None:
        """Poll the health check until it passes; StackError if the process
        exits or `deadline` (time.monotonic) passes, with the log's tail.

        `fresh`: the process was just spawned; one without health check or
        port must then also survive `min_uptime_s`.
        """
        spec = self.spec
        settle = 0.0
        if fresh and spec.health is None and spec.port is None:
            settle = time.monotonic() + spec.min_uptime_s
        while True:
            if not _alive(pid):
                code = _exit_code(pid)
                status = f" with code {code}" if code is not None else ""
                raise StackError(f"{self.name} exited{status} during start{self.log_tails()}")
            if time.monotonic() >= settle and self.healthy():
                return
            if time.monotonic() > deadline:
                last = f" (last check: {self.last_health_error})" if self.last_health_error else ""
                raise StackError(
                    f"{self.name} (pid {pid}) did not become healthy within "
                    f"{self.spec.start_timeout_s:.0f} s{last}{self.log_tails()}"
                )
            time.sleep(_POLL_S)

    def log_tails(self) -> str:
        parts = []
        for path in (self.log_file, *self.spec.extra_logs):
            tail = _tail(path, _LOG_TAIL_LINES)
            if tail:
                parts.append(f"\n--- last lines of {path} ---\n{tail}")
        return "".join(parts)

    # -- stop ----------------------------------------------------------------

    def terminate(self) -> int | None:
        """Send the stop signal to our process group; returns the pid signalled (or None)."""
        pid = self.pid()
        if pid is None:
            self._forget()
            return None
        _signal_group(pid, self.spec.stop_signal)
        return pid

    def wait_stopped(self, pid: int, timeout_s: float | None = None) -> None:
        """Wait for the group to exit; SIGKILL it after the timeout."""
        timeout_s = self.spec.stop_timeout_s if timeout_s is None else timeout_s
        if not _wait_gone(pid, time.monotonic() + timeout_s):
            _signal_group(pid, signal.SIGKILL)
            if not _wait_gone(pid, time.monotonic() + 5.0):
                raise StackError(f"{self.name} (pid {pid}) survived SIGKILL")
        self._forget()
        if self.spec.after_stop is not None:
            self.spec.after_stop()

    def stop(self) -> bool:
        """Stop the process if it is ours and running; True if it was running."""
        pid = self.terminate()
        if pid is None:
            return False
        self.wait_stopped(pid)
        return True

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)


# -- processes ---------------------------------------------------------------


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)
        _exit_codes[pid] = proc.returncode


_exit_codes: dict[int, int] = {}


def _exit_code(pid: int) -> int | None:
    _reap(pid)
    return _exit_codes.get(pid)


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's: the marker check rejects it
    state = _proc_state(pid)
    if state == "Z":
        return _zombie_still_exiting(pid)
    return state is not None


def _zombie_still_exiting(pid: int) -> bool:
    """A zombie leader whose other threads still run (a Go program while it
    exits) still holds its sockets and files: not gone yet."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/<pid>/stat ('Z' = zombie); '?' without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "?" if not Path("/proc/self/stat").exists() else None
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def _marker_of(pid: int) -> str | None:
    """The value of our ownership marker in the process's environment.

    "" when the environment cannot be read (another user's process: never
    ours), None when the variable is absent.
    """
    prefix = f"{MARKER_ENV}=".encode()
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self/environ").exists():
            return ""  # Linux, process gone
        return _marker_of_ps(pid)  # macOS and friends
    except OSError:  # PermissionError (another user's), ESRCH (kernel thread): not ours
        return ""
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def _marker_of_ps(pid: int) -> str | None:
    try:
        out = subprocess.run(
            ["ps", "eww", "-o", "command=", "-p", str(pid)],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for word in out.split():
        if word.startswith(f"{MARKER_ENV}="):
            return word.split("=", 1)[1]
    return None


def _start_ticks(pid: int) -> int | None:
    """Kernel start time of `pid` (clock ticks since boot); None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after "comm)": state is field 3, starttime field 22
    return int(stat.rsplit(")", 1)[1].split()[19])


def _group_alive(pgid: int) -> bool:
    """Is any non-zombie process left in process group `pgid`?"""
    _reap(pgid)
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and (fields[0] != "Z" or _zombie_still_exiting(int(entry.name))):
            return True
    return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by `pid`, or just `pid` if it left it."""
    try:
        os.killpg(pid, sig)  # session leader: pgid == pid
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pid: int, deadline: float) -> bool:
    while True:
        if not _alive(pid) and not _group_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)


# -- ports -------------------------------------------------------------------


def port_in_use(port: int, host: str = HOST) -> bool:
    """Can nobody bind `host:port` right now? (SO_REUSEADDR ignores TIME_WAIT.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_accepts(port: int, host: str = HOST, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, command name) of the process listening on `port`, best effort (Linux)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    name = (entry / "comm").read_text().strip()
                    return int(entry.name), name
        except OSError:
            continue
    return None


# -- files -------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
