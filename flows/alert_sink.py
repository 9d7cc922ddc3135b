"""Alerts to Kafka `alerts` (each acknowledged) and ClickHouse `alerts`.

Both retry until they succeed, like the event sinks. Delivery is
at-least-once; the alert id makes it idempotent for readers: ClickHouse
collapses repeats (ReplacingMergeTree on alert_id) and consumers of the
topic key on it.
"""

from __future__ import annotations

import orjson
import structlog
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import metrics
from meterflow.clients import clickhouse_client
from meterflow.kafka import ConfirmedPublisher, OutgoingMessage
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from meterflow.storage import ALERTS_COLUMNS
from operators.alerts import Alert

log = structlog.get_logger(__name__)


def alert_row(alert: Alert) -> list:
    data = alert.to_dict()
    return [
        data["alert_id"], alert.customer_id, alert.metric, alert.kind, alert.severity, data["score"],
        alert.window_start, alert.window_end, orjson.dumps(data["evidence"]).decode(),
        alert.created_at, alert.event_time,
    ]  # fmt: skip


class _AlertPartition(StatelessSinkPartition[tuple[str, Alert]]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._publisher = ConfirmedPublisher(settings)
        self._clickhouse = None
        self._table = f"{settings.clickhouse_database}.alerts"

    def _insert(self, rows: list[list]) -> None:
        if self._clickhouse is None:
            self._clickhouse = clickhouse_client(self._settings)
        try:
            self._clickhouse.insert(self._table, rows, column_names=ALERTS_COLUMNS)
        except Exception:
            self._clickhouse = None
            raise

    def write_batch(self, items: list[tuple[str, Alert]]) -> None:
        alerts = [alert for _, alert in items]
        if not alerts:
            return
        backoff = self._settings.sink_retry_max_backoff_s
        rows = [alert_row(a) for a in alerts]
        pending = [
            OutgoingMessage(self._settings.topic_alerts, a.to_json(), key=a.customer_id.encode())
            for a in alerts
        ]
        with metrics.SINK_WRITE_SECONDS.labels(sink="alerts").time():
            retry_forever(lambda: self._insert(rows), what="clickhouse_alerts", max_backoff_s=backoff)
            retry_forever(lambda: self._publisher.send(pending), what="kafka_alerts", max_backoff_s=backoff)
        for alert in alerts:
            metrics.ALERTS.labels(kind=alert.kind).inc()
            log.warning(
                "alert", alert_id=alert.alert_id, customer_id=alert.customer_id, metric=alert.metric,
                kind=alert.kind, severity=alert.severity, score=alert.to_dict()["score"],
            )  # fmt: skip

    def close(self) -> None:
        self._publisher.close()


class AlertSink(DynamicSink[tuple[str, Alert]]):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _AlertPartition:
        return _AlertPartition(self._settings)
