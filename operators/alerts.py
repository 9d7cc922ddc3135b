"""One alert schema for every detector, with an idempotent identity."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

AlertKind = Literal["fraud_pattern", "usage_spike", "daily_anomaly"]
ALERT_KINDS: tuple[str, ...] = ("fraud_pattern", "usage_spike", "daily_anomaly")


def alert_id_for(customer_id: str, metric: str, kind: str, severity: str, window_start_ms: int) -> str:
    """The same finding about the same window always gets the same id, so it
    is stored and delivered once however often it is detected (replays,
    restarts). Severity is part of it: a warning may still escalate to a
    critical alert for the same window, once."""
    digest = hashlib.sha256(f"{customer_id}|{metric}|{kind}|{severity}|{window_start_ms}".encode())
    return "alt_" + digest.hexdigest()[:24]


def _finite(value: Any) -> Any:
    """JSON has no Infinity: unbounded scores are written as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Alert:
    customer_id: str
    metric: str
    kind: AlertKind
    severity: str  # "warning" | "critical"
    score: float  # similarity for patterns, Z-score for spikes and anomalies
    window_start: int  # Unix ms
    window_end: int  # Unix ms, exclusive
    evidence: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0  # Unix ms, when detected
    event_time: int = 0  # Unix ms, the newest event the detector had seen

    @property
    def alert_id(self) -> str:
        return alert_id_for(self.customer_id, self.metric, self.kind, self.severity, self.window_start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "customer_id": self.customer_id,
            "metric": self.metric,
            "kind": self.kind,
            "severity": self.severity,
            "score": _finite(self.score),
            "window": {"start": self.window_start, "end": self.window_end},
            "evidence": {k: _finite(v) for k, v in self.evidence.items()},
            "created_at": self.created_at,
            "event_time": self.event_time,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())
