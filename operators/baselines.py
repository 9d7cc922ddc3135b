"""Weekday baselines at rest in Redis, shared by the API and the dataflow.

`POST /v1/fraud/baselines/build` learns baselines from stored history and
saves them here; a streaming detector that starts for a (customer, metric)
loads them, so it can judge today's pattern without first waiting weeks to
learn it online. One hash per (customer, metric), one field per weekday
(Monday = 0), each a small JSON document.
"""

from __future__ import annotations

import orjson
import redis

from operators.detection import HOURS, WeekdayBaseline

KEY_PREFIX = "baseline:"


def baseline_key(customer_id: str, metric: str) -> str:
    return f"{KEY_PREFIX}{customer_id}:{metric}"


def save_baselines(
    client: redis.Redis, customer_id: str, metric: str, baselines: dict[int, WeekdayBaseline]
) -> None:
    """Replace the stored baselines of (customer, metric) with `baselines`."""
    key = baseline_key(customer_id, metric)
    fields = {
        str(weekday): orjson.dumps({"vector": list(b.vector), "volume": b.volume, "days": b.days})
        for weekday, b in baselines.items()
    }
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)
        pipe.execute()


def load_baselines(client: redis.Redis, customer_id: str, metric: str) -> dict[int, WeekdayBaseline]:
    """The stored baselines of (customer, metric); empty when none were built.

    A field that does not parse as a baseline is skipped rather than
    trusted: a wrong baseline would raise false alerts all day.
    """
    stored = client.hgetall(baseline_key(customer_id, metric))
    baselines: dict[int, WeekdayBaseline] = {}
    for field_name, raw in stored.items():
        try:
            weekday = int(field_name)
            data = orjson.loads(raw)
            vector = tuple(float(x) for x in data["vector"])
            baseline = WeekdayBaseline(vector, float(data["volume"]), int(data["days"]))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            continue
        if 0 <= weekday <= 6 and len(vector) == HOURS:
            baselines[weekday] = baseline
    return baselines
