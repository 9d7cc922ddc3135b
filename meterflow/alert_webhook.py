"""Deliver alerts to a configured webhook::

    ALERT_WEBHOOK_URL=https://example.com/hooks/meterflow python -m meterflow.alert_webhook

A consumer of the `alerts` topic, apart from the dataflow, so a slow or
dead receiver never stalls metering. Each alert is POSTed signed (see
meterflow.webhooks) as event `alert.triggered` with the alert id as event
id; the consumer group's offset is committed only after the alert was
delivered or dead-lettered, so a crash re-delivers rather than loses. A
Redis mark per delivered alert (`webhook:sent:<alert_id>`) keeps the
dataflow's re-detections and this consumer's own restarts from sending an
alert twice, except for the one a crash interrupts (receivers deduplicate
by `X-MeterFlow-Event-Id`).
"""

from __future__ import annotations

import signal
import threading

import httpx
import orjson
import structlog
from confluent_kafka import Consumer, Message

from meterflow.clients import redis_client
from meterflow.log import configure_logging
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from meterflow.webhooks import WebhookEvent, dead_letter, deliver

log = structlog.get_logger(__name__)

GROUP_ID = "meterflow-alert-webhook"
SENT_PREFIX = "webhook:sent:"
SENT_TTL_S = 30 * 24 * 3600


def alerts_consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": GROUP_ID,
            "enable.auto.commit": False,
            # A new group starts at the oldest retained alert: none is skipped.
            "auto.offset.reset": "earliest",
            # Tansu completes a group join about one session timeout after
            # the first member asks (docs/benchmarks.md); keep it short.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )


class AlertWebhook:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis = redis_client(settings)
        self._http = httpx.Client(timeout=settings.webhook_timeout_s)

    def handle(self, message: Message) -> None:
        """Deliver one alert message, or dead-letter it; returns when either is done."""
        try:
            alert_id = orjson.loads(message.value())["alert_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("alert_unreadable", offset=message.offset(), partition=message.partition())
            return
        mark = SENT_PREFIX + alert_id
        backoff = self._settings.sink_retry_max_backoff_s
        if retry_forever(lambda: self._redis.exists(mark), what="webhook_mark", max_backoff_s=backoff):
            return
        url = self._settings.alert_webhook_url
        event = WebhookEvent(alert_id, "alert.triggered", message.value())
        result = deliver(
            self._http, url, event, self._settings.webhook_secret,
            attempts=self._settings.webhook_attempts, max_backoff_s=self._settings.webhook_max_backoff_s,
        )  # fmt: skip
        if result.delivered:
            log.info("alert_delivered", alert_id=alert_id, attempts=result.attempts)
        else:
            retry_forever(lambda: dead_letter(self._redis, url, event, result), what="webhook_dlq", max_backoff_s=backoff)
        retry_forever(lambda: self._redis.set(mark, 1, ex=SENT_TTL_S), what="webhook_mark", max_backoff_s=backoff)

    def close(self) -> None:
        self._http.close()
        self._redis.close()


def run(settings: Settings, stop: threading.Event) -> None:
    consumer = alerts_consumer(settings)
    consumer.subscribe([settings.topic_alerts])
    webhook = AlertWebhook(settings)
    log.info("alert_webhook_started", topic=settings.topic_alerts)
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                log.warning("kafka_consumer_error", error=str(message.error()))
                continue
            webhook.handle(message)
            consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()
        webhook.close()


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    if not settings.alert_webhook_url:
        raise SystemExit("ALERT_WEBHOOK_URL is not set: nothing to deliver to")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(settings, stop)


if __name__ == "__main__":
    main()
