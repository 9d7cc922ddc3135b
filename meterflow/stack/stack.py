"""`Stack`: start, stop and inspect the local services as one unit."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from meterflow.stack.config import StackConfig
from meterflow.stack.process import HealthCheck, Launch, ManagedProcess, ProcessSpec, StackError
from meterflow.stack.services import CORE_SERVICES, build_specs


@dataclass(frozen=True)
class ServiceStatus:
    """What `Stack.status()` knows about one process."""

    name: str
    running: bool  # our process is alive (pid file + ownership marker)
    pid: int | None
    port: int | None
    healthy: bool  # its health check passed just now
    log_file: Path
    detail: str = ""  # e.g. "stale pid file removed", the last health error, the dataflow's lag
    ready: bool = True  # healthy and its readiness check passed too (the dataflow is not stalled)

    def __str__(self) -> str:
        if not self.running:
            state = "stopped"
        elif self.healthy and self.ready:
            state = "healthy"
        else:
            state = "UNHEALTHY"
        parts = [f"{state:<9}"]
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.port is not None:
            parts.append(f"port {self.port}")
        parts.append(f"log {self.log_file}")
        if self.detail:
            parts.append(f"({self.detail})")
        return "  ".join(parts)


class Stack:
    """The native local stack: Redis, Tansu (Kafka), ClickHouse, SeaweedFS (S3),
    plus any processes added with `add_process` (the dataflow, the API).

    Every process lives under `config.data_dir/<name>/` (pid file, log file,
    data), runs detached in its own session and is stopped by pid, so a
    `Stack` built in another process (`meterflow down`) can stop what an
    earlier one started. Methods that change state take a lock file in the
    data directory, so two callers cannot start the same stack twice.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._procs: dict[str, ManagedProcess] = {}
        for name, spec in build_specs(config).items():
            spec = dataclasses.replace(spec, start_timeout_s=config.start_timeout_s)
            self._procs[name] = ManagedProcess(spec, config.data_dir)

    # -- registry ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Registered processes in start order: the core services, then added ones."""
        return list(self._procs)

    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        health: HealthCheck | None = None,
        port: int | None = None,
        *,
        describe: Callable[[], str] | None = None,
        ready: HealthCheck | None = None,
        cwd: Path | None = None,
        start_timeout_s: float | None = None,
        stop_timeout_s: float = 15.0,
    ) -> None:
        """Register a process that `start()` launches after the core services.

        `env` is layered over os.environ. `health` returns True once the
        process serves (exceptions count as "not yet"); without it, an open
        `port` or merely being alive counts as healthy. `ready` is asked by
        `status` only, never while starting (see ProcessSpec.ready).
        `describe` gives `status` one line about the running process. `cwd` defaults to the
        current directory (so `-m package.module` resolves as in a shell).
        Nothing starts until `start()` or `start_service(name)`.
        """
        if name in CORE_SERVICES:
            raise ValueError(f"{name!r} is a core service name")
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid process name {name!r}")
        argv = list(argv)
        env = dict(env) if env is not None else None
        workdir = Path(cwd) if cwd is not None else Path.cwd()
        spec = ProcessSpec(
            name,
            lambda: Launch(argv, env=env, cwd=workdir),
            port=port,
            health=health,
            describe=describe,
            ready=ready,
            start_timeout_s=start_timeout_s or self.config.start_timeout_s,
            stop_timeout_s=stop_timeout_s,
        )
        self._procs[name] = ManagedProcess(spec, self.config.data_dir)

    # -- start ---------------------------------------------------------------

    def start(self) -> None:
        """Start whatever is not running and wait until everything is healthy.

        Idempotent: running processes are only health-checked. The core
        services boot in parallel (start time is the slowest one, about 1 s),
        then the added processes, which need them. On any failure the
        processes this call started are stopped again and StackError says
        what failed, with the tail of its log.
        """
        with self._lock():
            started: list[str] = []
            try:
                for group in self._start_phases():
                    self._start_group(group, started)
            except BaseException:
                self._stop_names(list(reversed(started)))
                raise

    def _start_phases(self) -> list[list[str]]:
        """Groups started together; each waits for the previous one's health."""
        core = [n for n in self._procs if n in CORE_SERVICES]
        extra = [n for n in self._procs if n not in CORE_SERVICES]
        if self.config.kafka_storage == "s3":  # the broker stores into the s3 service
            return [[n for n in core if n != "kafka"], ["kafka"], extra]
        return [core, extra]

    def start_service(self, name: str) -> None:
        """Start one registered process (if not running) and wait for health."""
        proc = self._get(name)
        with self._lock():
            started: list[str] = []
            try:
                self._start_group([proc.name], started)
            except BaseException:
                self._stop_names(started)
                raise

    def _start_group(self, names: list[str], started: list[str]) -> None:
        waiting: list[tuple[ManagedProcess, int, float, bool]] = []
        for name in names:
            proc = self._procs[name]
            pid = proc.pid()
            if pid is not None:
                recorded = proc.recorded_ports()
                wanted = list(proc.spec.bound_ports)
                if recorded is not None and sorted(recorded) != sorted(wanted):
                    raise StackError(
                        f"{name} is already running (pid {pid}) from {proc.dir} on ports {recorded}, "
                        f"but this config wants {wanted}; stop it first"
                    )
                fresh = False
            else:
                proc.check_ports_free()
                pid = proc.spawn()
                started.append(name)
                fresh = True
            waiting.append((proc, pid, time.monotonic() + proc.spec.start_timeout_s, fresh))
        errors: list[str] = []
        for proc, pid, deadline, fresh in waiting:
            try:
                proc.wait_healthy(pid, deadline, fresh)
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError("\n\n".join(errors))

    # -- stop ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process of this stack that is running, ours only.

        Added processes go first (they flush into the services), then the
        core services together. Processes found under the data directory but
        not registered here (e.g. `api` started by `meterflow up`, stopped by
        a bare Stack) are stopped too. SIGTERM first, SIGKILL after each
        process's stop timeout.
        """
        with self._lock():
            extra = [n for n in self._all_procs() if n not in CORE_SERVICES]
            self._stop_names(list(reversed(extra)))
            if self.config.kafka_storage == "s3":
                self._stop_names(["kafka"])
            self._stop_names(list(reversed(CORE_SERVICES)))

    def stop_service(self, name: str) -> None:
        """Stop one process (for fault-injection tests); no-op if not running."""
        self._get(name)
        with self._lock():
            self._stop_names([name])

    def _stop_names(self, names: Iterable[str]) -> None:
        procs = self._all_procs()
        signalled = []
        for name in names:
            proc = procs.get(name)
            if proc is None:
                continue
            pid = proc.terminate()
            if pid is not None:
                signalled.append((proc, pid))
        errors = []
        for proc, pid in signalled:
            try:
                proc.wait_stopped(pid)
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError("; ".join(errors))

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, ServiceStatus]:
        """name -> ServiceStatus for every registered or discovered process.

        Runs each running process's health check once, then its readiness
        check if it is healthy (about a millisecond each when healthy, up to
        ~2 s when one hangs).
        """
        result: dict[str, ServiceStatus] = {}
        for name, proc in self._all_procs().items():
            pid = proc.pid()
            detail = ""
            healthy = ready = False
            if pid is not None:
                healthy = proc.healthy()
                ready = healthy and proc.is_ready()
                if not ready and proc.last_health_error:
                    detail = proc.last_health_error
                detail = _described(proc) or detail
            elif proc.recorded_pid() is not None:
                detail = f"stale pid file (pid {proc.recorded_pid()} is gone or not ours)"
            result[name] = ServiceStatus(
                name=name,
                running=pid is not None,
                pid=pid,
                port=proc.spec.port,
                healthy=healthy,
                log_file=proc.log_file,
                detail=detail,
                ready=ready,
            )
        return result

    def healthy(self) -> bool:
        """True when every registered process runs and passes its health and readiness checks."""
        statuses = self.status()
        return all(statuses[name].healthy and statuses[name].ready for name in self._procs)

    # -- context manager (tests) --------------------------------------------

    def __enter__(self) -> "Stack":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------

    def _get(self, name: str) -> ManagedProcess:
        try:
            return self._procs[name]
        except KeyError:
            raise StackError(f"unknown service {name!r}; known: {', '.join(self._procs)}") from None

    def _all_procs(self) -> dict[str, ManagedProcess]:
        """Registered processes plus any `<dir>/<name>/<name>.pid` found on disk."""
        procs = dict(self._procs)
        data_dir = self.config.data_dir
        if data_dir.is_dir():
            for pid_file in sorted(data_dir.glob("*/*.pid")):
                name = pid_file.parent.name
                if pid_file.stem != name or name in procs:
                    continue
                spec = ProcessSpec(name, _no_launch(name))
                procs[name] = ManagedProcess(spec, data_dir)
        return procs

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.config.data_dir / ".stack.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _described(proc: ManagedProcess) -> str:
    """The process's own line for `status`, or "" when it has none to give."""
    if proc.spec.describe is None:
        return ""
    try:
        return proc.spec.describe()
    except Exception:  # noqa: BLE001 - a process that cannot say is shown without it
        return ""


def _no_launch(name: str):
    def launch() -> Launch:
        raise StackError(f"{name} was found on disk but is not registered; cannot start it")

    return launch
