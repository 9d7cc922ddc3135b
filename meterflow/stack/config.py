"""Where the local stack listens and keeps its data.

A `StackConfig` is plain data: ports, keys and the data directory. It is
built from the application's `Settings` (the dev stack, `meterflow up`) or
with every port chosen free (`StackConfig.ephemeral`, the test fixtures), and
turns back into `Settings` that point at the stack, so the code under test
and the stack can never disagree about an address.
"""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from meterflow.settings import Settings

#: Every service binds loopback only: the stack is for one developer's
#: machine (shared with other work), never for the network.
HOST = "127.0.0.1"

KAFKA_STORAGES = ("memory", "s3")
#: The bucket Tansu's s3 storage engine uses (kafka_storage="s3").
KAFKA_BUCKET = "meterflow-kafka"

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()

# The dev stack's default ports (Settings defaults and S3Ports.derived(19000)):
# a test stack must not take them while the dev stack happens to be down.
_RESERVED = {3000, 16379, 18123, 19092, 19464, *range(19000, 19010)}


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535  # IANA's range, used by macOS and Windows


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now on `host`, outside the ephemeral range.

    Why not simply bind to port 0: the kernel then picks from the ephemeral
    range, which it also uses for the local end of outgoing connections. A
    service stopped in a fault test could then find "its" port taken by
    some client's connection when it restarts. So ports are drawn at random
    below (or above) that range and test-bound. A port is never handed out
    twice by one process, because a test session asks for many ports
    before it binds any of them.
    """
    low, high = _ephemeral_range()
    if low - 20000 >= 2000:
        candidates = range(20000, low)
    elif 65535 - high >= 2000:
        candidates = range(high + 1, 65536)
    else:  # pragma: no cover - unusual kernel settings
        candidates = range(1024, 1)  # empty: fall back to the kernel's choice
    rng = random.SystemRandom()
    for _ in range(500 if len(candidates) else 0):
        port = rng.choice(candidates)
        if port in _RESERVED or not _bindable(host, port):
            continue
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free TCP port")  # pragma: no cover


def _bindable(host: str, port: int) -> bool:
    # No SO_REUSEADDR: a port with connections in TIME_WAIT is skipped too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class S3Ports:
    """The ports SeaweedFS opens besides the S3 endpoint itself.

    `weed mini` runs a master, a volume server, a filer, the S3 gateway and
    an admin server in one process; each has an HTTP and a gRPC port, and
    unset ones default to fixed numbers (9333, 8080, 8888, 23646, port+10000)
    that would collide between two stacks on one machine. So every one is
    set explicitly. SeaweedFS also names a unix socket in /tmp after each
    gRPC port, another reason they must be unique per running stack.
    """

    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def derived(cls, s3_port: int) -> "S3Ports":
        """The nine ports right above the S3 port (19000 -> 19001..19009).

        Deterministic, so the dev stack always comes back on the same ports
        (SeaweedFS remembers its volume server by address) and they are easy
        to find in `ss -ltnp`.
        """
        if s3_port + 9 > 65535:
            raise ValueError(f"s3 port {s3_port} leaves no room for its 9 auxiliary ports")
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: s3_port + 1 + i for i, name in enumerate(names)})

    @classmethod
    def ephemeral(cls) -> "S3Ports":
        """Nine ports chosen free, for a private test stack."""
        return cls(**{f.name: free_port() for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StackConfig:
    """Ports, credentials and data directory of one local stack.

    Defaults match `meterflow.settings.Settings`, i.e. the dev stack.
    `s3_aux_ports` None means "derived from `s3_port`" (see `S3Ports.derived`).
    """

    data_dir: Path
    kafka_port: int = 19092
    redis_port: int = 16379
    clickhouse_port: int = 18123
    s3_port: int = 19000
    s3_access_key: str = "meterflow"
    s3_secret_key: str = "meterflow-secret"
    s3_aux_ports: S3Ports | None = None
    #: Where the broker keeps topics: "s3" (objects in bucket KAFKA_BUCKET of
    #: this stack's SeaweedFS; survives broker restarts and kill -9) or
    #: "memory" (lost when it stops; ~1.6x faster produce). Durable by default:
    #: an acknowledged event must survive a broker restart. Measurements in
    #: docs/operations.md.
    kafka_storage: str = "s3"
    #: The port the broker reaches S3 at (kafka_storage="s3"); None = `s3_port`.
    #: Tests put a fault-injecting proxy there to make the broker's reads slow.
    kafka_s3_port: int | None = None
    #: How long `start()` waits for one service to answer its health check.
    start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kafka_storage not in KAFKA_STORAGES:
            raise ValueError(f"kafka_storage must be one of {KAFKA_STORAGES}, not {self.kafka_storage!r}")
        # Absolute, so pid-file ownership markers and child processes (which
        # run with another cwd) agree on the directory.
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        ports = self.all_ports()
        for service, service_ports in ports.items():
            for port in service_ports:
                if not 1 <= port <= 65535:
                    raise ValueError(f"{service} port {port} is out of range")
        flat = [p for service_ports in ports.values() for p in service_ports]
        duplicates = sorted({p for p in flat if flat.count(p) > 1})
        if duplicates:
            raise ValueError(f"ports used twice in the stack config: {duplicates}")

    @property
    def s3_ports(self) -> S3Ports:
        return self.s3_aux_ports or S3Ports.derived(self.s3_port)

    def all_ports(self) -> dict[str, list[int]]:
        """Every port each service binds (checked for strangers before start)."""
        return {
            "redis": [self.redis_port],
            "kafka": [self.kafka_port],
            "clickhouse": [self.clickhouse_port],
            "s3": [self.s3_port, *self.s3_ports.as_dict().values()],
        }

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "StackConfig":
        """The stack that `settings` point at (ports parsed from its addresses).

        `overrides` set or replace fields (e.g. kafka_storage, which
        Settings does not carry).
        """
        values: dict[str, Any] = dict(
            data_dir=settings.data_dir,
            kafka_port=_port_of(settings.kafka_bootstrap_servers.split(",")[0], 9092),
            redis_port=urlparse(settings.redis_url).port or 6379,
            clickhouse_port=settings.clickhouse_port,
            s3_port=_port_of(settings.s3_endpoint, 443 if settings.s3_secure else 80),
            s3_access_key=settings.s3_access_key,
            s3_secret_key=settings.s3_secret_key,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def ephemeral(cls, data_dir: Path, **overrides: Any) -> "StackConfig":
        """A private stack in `data_dir` with every port chosen free.

        For tests: it can run beside the dev stack and beside another test
        session on the same machine.
        """
        values: dict[str, Any] = dict(
            data_dir=data_dir,
            kafka_port=free_port(),
            redis_port=free_port(),
            clickhouse_port=free_port(),
            s3_port=free_port(),
            s3_aux_ports=S3Ports.ephemeral(),
        )
        values.update(overrides)
        return cls(**values)

    def settings(self, base: Settings | None = None) -> Settings:
        """`base` (default: `Settings()`) re-pointed at this stack.

        Everything that names an address, a credential or the data directory
        is replaced; topic names, batch sizes etc. are kept. ClickHouse is
        reached as the password-less `default` user, the only one the
        native server has.
        """
        base = base if base is not None else Settings()
        redis_db = urlparse(base.redis_url).path or "/0"
        return dataclasses.replace(
            base,
            kafka_bootstrap_servers=f"{HOST}:{self.kafka_port}",
            redis_url=f"redis://{HOST}:{self.redis_port}{redis_db}",
            clickhouse_host=HOST,
            clickhouse_port=self.clickhouse_port,
            clickhouse_user="default",
            clickhouse_password="",
            s3_endpoint=f"{HOST}:{self.s3_port}",
            s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key,
            s3_secure=False,
            data_dir=self.data_dir,
        )


def _port_of(address: str, default: int) -> int:
    """The port of `host:port`, `scheme://host:port/...` or `[v6]:port`."""
    address = address.strip()
    if "://" not in address:
        address = f"tcp://{address}"
    port = urlparse(address).port
    return port if port is not None else default
