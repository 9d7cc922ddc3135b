"""The dataflow's progress heartbeat in Redis: written by each dataflow
process (flows.metrics), read by the API's /health.

Why Redis: the API and the dataflow are separate processes (several of each
in a cluster) that already share it, and a heartbeat with a time to live
tells "stalled" (the process says so) from "down" (nobody says anything any
more) without the API having to know where the dataflow processes run.

One hash per dataflow process, `flow:progress:<topic>:<host>:<pid>`, expiring
unless renewed: a process that dies (or hangs) disappears after the TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

_PREFIX = "flow:progress:"


@dataclass(frozen=True)
class Heartbeat:
    """One dataflow process's last word about its partitions of one topic."""

    process: str  # host:pid
    stalled: bool  # a partition with a backlog made no progress for FLOW_STALL_AFTER_S
    lag: int | None  # messages not yet read over its partitions; None before it could ask the broker
    last_progress_ms: int  # when one of its partitions last moved (or the process started)
    updated_ms: int  # when the process wrote this

    def as_hash(self) -> dict[str, str]:
        return {
            "stalled": "1" if self.stalled else "0",
            "lag": "" if self.lag is None else str(self.lag),
            "last_progress_ms": str(self.last_progress_ms),
            "updated_ms": str(self.updated_ms),
        }

    @classmethod
    def from_hash(cls, process: str, fields: dict[str, str]) -> "Heartbeat":
        lag = fields.get("lag", "")
        return cls(
            process=process,
            stalled=fields.get("stalled") == "1",
            lag=int(lag) if lag else None,
            last_progress_ms=int(fields.get("last_progress_ms") or 0),
            updated_ms=int(fields.get("updated_ms") or 0),
        )


def key(topic: str, process: str) -> str:
    return f"{_PREFIX}{topic}:{process}"


def publish(client: redis.Redis, topic: str, heartbeat: Heartbeat, ttl_s: int) -> None:
    """Write (replace) `heartbeat`, living `ttl_s` seconds unless written again."""
    name = key(topic, heartbeat.process)
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(name)
        pipe.hset(name, mapping=heartbeat.as_hash())
        pipe.expire(name, ttl_s)
        pipe.execute()


def read_all(client: redis.Redis, topic: str) -> list[Heartbeat]:
    """The live heartbeats of every dataflow process reading `topic`."""
    prefix = key(topic, "")
    names = sorted(client.scan_iter(match=f"{prefix}*", count=100))
    if not names:
        return []
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        hashes = pipe.execute()
    beats = []
    for name, fields in zip(names, hashes):
        if fields:  # expired between the scan and the read
            name = name.decode() if isinstance(name, bytes) else name
            fields = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in fields.items()
            }
            beats.append(Heartbeat.from_hash(name[len(prefix):], fields))
    return beats
