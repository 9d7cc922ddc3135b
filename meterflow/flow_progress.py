"""The dataflow's progress heartbeat in Redis: written by each dataflow
process (flows.metrics), read by the API's /health.

Why Redis: the API and the dataflow are separate processes (several of each
in a cluster) that already share it, and a heartbeat that expires tells
"stalled" (the process says so) from "down" (nobody says anything any more)
without the API having to know where the dataflow processes run.

One hash per topic, `flow:progress:<topic>`: field = the process
(`<host>:<pid>`), value = its beat as JSON with `expires_ms`. The reader
reads that one key, never scans: the same database holds a dedup key per
event for 30 days, so a SCAN per /health would walk tens of millions of
keys. A process that dies (or hangs) stops renewing its beat; the reader
ignores it once expired and removes it. Expiry is judged on the Redis
server's clock (TIME), so clock skew between hosts does not matter. The
hash itself expires when no process writes any more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

_PREFIX = "flow:progress:"

# Writes one beat and keeps the hash at least `ttl` ms more: never shortens
# what a process with a longer TTL (a longer FLOW_STALL_AFTER_S) asked for.
_WRITE_BEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
"""

# Removes the expired beats the reader saw, unless a process rewrote its
# beat in between (the value changed): a reader never deletes a live beat.
_DELETE_IF_UNCHANGED = """
local deleted = 0
for i = 1, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
        deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
return deleted
"""


@dataclass(frozen=True)
class Heartbeat:
    """One dataflow process's last word about its partitions of one topic."""

    process: str  # host:pid
    stalled: bool  # a partition with a backlog made no progress for FLOW_STALL_AFTER_S
    lag: int | None  # messages not yet read over its partitions; None before it could ask the broker
    last_progress_ms: int  # when one of its partitions last moved (or the process started)
    updated_ms: int  # when the process wrote this

    def as_json(self, expires_ms: int) -> str:
        return json.dumps(
            {
                "stalled": self.stalled,
                "lag": self.lag,
                "last_progress_ms": self.last_progress_ms,
                "updated_ms": self.updated_ms,
                "expires_ms": expires_ms,
            }
        )

    @classmethod
    def from_json(cls, process: str, value: str) -> tuple["Heartbeat", int]:
        """The beat and when it expires (Redis clock, ms); ValueError, KeyError
        or TypeError for a value this module did not write."""
        fields = json.loads(value)
        beat = cls(
            process=process,
            stalled=bool(fields["stalled"]),
            lag=None if fields["lag"] is None else int(fields["lag"]),
            last_progress_ms=int(fields["last_progress_ms"]),
            updated_ms=int(fields["updated_ms"]),
        )
        return beat, int(fields["expires_ms"])


def key(topic: str) -> str:
    """The hash that holds every process's beat for `topic`."""
    return f"{_PREFIX}{topic}"


def _server_ms(time_reply: tuple[int, int]) -> int:
    seconds, micros = time_reply
    return int(seconds) * 1000 + int(micros) // 1000


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def publish(client: redis.Redis, topic: str, heartbeat: Heartbeat, ttl_s: int) -> None:
    """Write (replace) this process's beat, alive `ttl_s` seconds unless written again."""
    expires_ms = _server_ms(client.time()) + ttl_s * 1000
    # The hash is gone once every process has stopped writing.
    client.eval(_WRITE_BEAT, 1, key(topic), heartbeat.process, heartbeat.as_json(expires_ms), ttl_s * 1000)


def read_all(client: redis.Redis, topic: str) -> list[Heartbeat]:
    """The live beats of every dataflow process reading `topic`, in process
    order; expired (or unreadable) beats are ignored and removed. Two round
    trips at most, whatever else the database holds."""
    name = key(topic)
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(name)
        pipe.time()
        stored, now = pipe.execute()
    now_ms = _server_ms(now)
    live: list[Heartbeat] = []
    dead: list[str] = []
    for field, value in sorted((_text(f), _text(v)) for f, v in stored.items()):
        try:
            beat, expires_ms = Heartbeat.from_json(field, value)
        except (ValueError, KeyError, TypeError):
            dead += [field, value]
            continue
        if expires_ms > now_ms:
            live.append(beat)
        else:
            dead += [field, value]
    if dead:
        client.eval(_DELETE_IF_UNCHANGED, 1, name, *dead)
    return live
