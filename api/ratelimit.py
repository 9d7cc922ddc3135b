"""Sliding-window rate limits, atomic in Redis: per customer for keyed
routes, per client address for admin routes (api.deps).

One Lua script per request: drop timestamps older than the window, count
what is left, admit and record this request only if under the limit. Redis
runs scripts one at a time, so concurrent requests (from any number of API
processes) can never be admitted beyond the limit. Time comes from Redis
(`TIME`), so API hosts with skewed clocks share one notion of the window.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import redis

_SCRIPT = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window_ms)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window_ms)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window_ms - now}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    window_s: int
    retry_after_s: int  # 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.window_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter:
    def __init__(self, client: redis.Redis, limit: int, window_s: int) -> None:
        self._script = client.register_script(_SCRIPT)
        self.limit = limit
        self.window_s = window_s

    def hit(self, subject: str) -> Decision:
        """Count one request of `subject` (a customer id, or `admin:<address>`,
        which no customer id can be: ids have no colon)."""
        allowed, remaining, retry_ms = self._script(
            keys=[f"ratelimit:{subject}"],
            args=[self.limit, self.window_s * 1000, uuid.uuid4().hex],
        )
        return Decision(
            allowed=bool(allowed),
            limit=self.limit,
            remaining=int(remaining),
            window_s=self.window_s,
            retry_after_s=max(1, math.ceil(int(retry_ms) / 1000)) if not allowed else 0,
        )
