"""The webhook process (`webhooks` in `meterflow up`)::

    python -m meterflow.webhook_worker

Apart from the dataflow and the API, so a slow or dead receiver never
stalls metering or a request. It does two things:

- consumes the `alerts` topic: each alert becomes an `alert.triggered`
  event (event id = alert id) for the endpoints its customer registered
  and, when ALERT_WEBHOOK_URL is set, for the operator's endpoint, which
  gets the alert itself as the body (signed with WEBHOOK_SECRET). The
  consumer group's offset is committed only after the deliveries were
  queued, so a crash queues again rather than loses; queueing is idempotent
  by event id, so neither that nor a re-detected alert sends twice;
- runs DELIVERY_THREADS delivery loops over the outbox
  (meterflow.webhook_outbox), each claiming one due delivery at a time.
"""

from __future__ import annotations

import signal
import threading

import httpx
import orjson
import redis
import structlog
from confluent_kafka import Consumer, Message

from meterflow.clients import redis_client
from meterflow.log import configure_logging
from meterflow.retry import retry_forever
from meterflow.settings import Settings
from meterflow.webhook_outbox import (
    ALERT_TRIGGERED,
    Deliverer,
    Endpoint,
    check_url,
    enqueue,
    publish,
    set_operator_endpoint,
)
from meterflow.webhooks import RetryPolicy, WebhookEvent, delivery_client

log = structlog.get_logger(__name__)

# Concurrent deliveries: as many endpoints can be slow at once before the
# others wait for a free loop.
DELIVERY_THREADS = 8
IDLE_WAIT_S = 0.2  # how long a loop with nothing due waits before looking again
# A claim outlives one attempt: httpx applies the timeout to connecting,
# sending and each read separately, so an attempt can take a few of them.
LEASE_TIMEOUTS = 4


def group_id(settings: Settings) -> str:
    """One consumer group per alerts topic: a process on another topic (a
    test's) never joins, and so never rebalances, the stack's group."""
    return f"meterflow-webhooks.{settings.topic_alerts}"


def alerts_consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": group_id(settings),
            "enable.auto.commit": False,
            # A new group starts at the oldest retained alert: none is skipped.
            "auto.offset.reset": "earliest",
            # Tansu completes a group join about one session timeout after
            # the first member asks (docs/benchmarks.md); keep it short.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )


def queue_alert(client: redis.Redis, message: Message, operator: Endpoint | None) -> None:
    """Queue one alert message's deliveries; returns once they are in Redis."""
    try:
        alert = orjson.loads(message.value())
        customer_id, alert_id = alert["customer_id"], alert["alert_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.error("alert_unreadable", offset=message.offset(), partition=message.partition())
        return
    publish(client, customer_id, ALERT_TRIGGERED, alert_id, alert)
    if operator is not None:
        enqueue(client, operator, customer_id, WebhookEvent(alert_id, ALERT_TRIGGERED, message.value()))


def consume_alerts(settings: Settings, client: redis.Redis, operator: Endpoint | None, stop: threading.Event) -> None:
    consumer = alerts_consumer(settings)
    consumer.subscribe([settings.topic_alerts])
    log.info("alerts_consumer_started", topic=settings.topic_alerts, operator=operator is not None)
    backoff = settings.sink_retry_max_backoff_s
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                log.warning("kafka_consumer_error", error=str(message.error()))
                continue
            retry_forever(lambda: queue_alert(client, message, operator), what="webhook_queue", max_backoff_s=backoff)
            consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


def delivery_loop(deliverer: Deliverer, stop: threading.Event) -> None:
    """Deliver whatever is due until `stop`; a failure (Redis away) is logged
    and retried after a pause, the delivery being safe in Redis meanwhile."""
    while not stop.is_set():
        try:
            busy = deliverer.run_once()
        except Exception:  # noqa: BLE001 - the loop must outlive any one delivery
            log.exception("webhook_delivery_failed")
            stop.wait(1.0)
            continue
        if not busy:
            stop.wait(IDLE_WAIT_S)


def run(settings: Settings, stop: threading.Event) -> None:
    """The alerts consumer in this thread, the delivery loops beside it; when
    the consumer fails, the loops stop too and the error ends the process."""
    client = redis_client(settings)
    # Customers' endpoints: public addresses only, checked where the socket
    # connects; the operator's own endpoint may be anywhere.
    http = delivery_client(settings.webhook_timeout_s, settings.webhook_allow_private_urls)
    operator_http = httpx.Client(timeout=settings.webhook_timeout_s)
    backoff = settings.sink_retry_max_backoff_s
    operator = retry_forever(
        lambda: set_operator_endpoint(client, settings.alert_webhook_url, settings.webhook_secret),
        what="webhook_operator_endpoint",
        max_backoff_s=backoff,
    )
    lease_s = LEASE_TIMEOUTS * settings.webhook_timeout_s
    deliverer = Deliverer(client, http, RetryPolicy.from_settings(settings), lease_s, operator_http)
    loops = [
        threading.Thread(target=delivery_loop, args=(deliverer, stop), name=f"webhook-delivery-{i}", daemon=True)
        for i in range(DELIVERY_THREADS)
    ]
    for loop in loops:
        loop.start()
    log.info("webhook_worker_started", delivery_threads=DELIVERY_THREADS, lease_s=lease_s)
    try:
        consume_alerts(settings, client, operator, stop)
    finally:
        stop.set()
        for loop in loops:
            loop.join(lease_s)
        http.close()
        operator_http.close()
        client.close()


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    if settings.alert_webhook_url:
        try:
            check_url(settings.alert_webhook_url)
        except ValueError as exc:
            raise SystemExit(f"ALERT_WEBHOOK_URL {settings.alert_webhook_url!r}: {exc}") from exc
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(settings, stop)


if __name__ == "__main__":
    main()
