"""Producing with proof: a batch is only "sent" once the broker acknowledged it.

librdkafka reports each message's fate in a delivery callback; `flush()`
alone says nothing about failures. Both the API (ingest) and the dataflow
(dead letters) need per-message outcomes, so they share this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer

from meterflow.clients import kafka_producer
from meterflow.settings import Settings


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = 0  # the message's CreateTime; 0 = now


def produce_confirmed(
    producer: Producer, messages: list[OutgoingMessage], timeout_s: float
) -> list[KafkaError | None]:
    """Produce `messages` and wait for each one's acknowledgement.

    Returns one entry per message: None when acknowledged, else the error.
    Messages still unconfirmed after `timeout_s` are reported as timed out.
    """
    outcomes: list[KafkaError | None] = [None] * len(messages)
    pending = set(range(len(messages)))

    def on_delivery_for(index: int):
        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            outcomes[index] = err
            pending.discard(index)

        return on_delivery

    for index, message in enumerate(messages):
        while True:
            try:
                producer.produce(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=message.headers or None,
                    timestamp=message.timestamp_ms,
                    on_delivery=on_delivery_for(index),
                )
                break
            except BufferError:
                # Local queue full: let librdkafka send some, then go on.
                producer.poll(0.05)
            except KafkaException as exc:
                # Refused before sending (e.g. the producer hit a fatal error).
                outcomes[index] = exc.args[0]
                pending.discard(index)
                break
    # Wait for our own reports only (the producer may be shared by threads
    # with messages of their own in flight); poll() serves any callback.
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        try:
            producer.poll(0.005)
        except KafkaException as exc:
            # A fatal producer error surfaces here: nothing pending will be sent.
            for index in pending:
                outcomes[index] = exc.args[0]
            pending.clear()
    for index in pending:
        outcomes[index] = KafkaError(KafkaError._MSG_TIMED_OUT, "not acknowledged in time")
    return outcomes


class ConfirmedPublisher:
    """A producer for sinks: `send` raises unless every message was
    acknowledged, keeping only the failed ones in the list it was given, so
    a retry resends exactly those (with a fresh producer, see
    api.deps.Clients.replace_producer for why)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = kafka_producer(settings)

    def send(self, pending: list[OutgoingMessage]) -> None:
        outcomes = produce_confirmed(self._producer, pending, self._settings.kafka_produce_timeout_s)
        failed = [(msg, err) for msg, err in zip(pending, outcomes) if err is not None]
        if failed:
            pending[:] = [msg for msg, _ in failed]
            self._producer = kafka_producer(self._settings)
            raise RuntimeError(f"{len(failed)} messages not acknowledged: {failed[0][1]}")

    def close(self) -> None:
        self._producer.flush(self._settings.kafka_produce_timeout_s)
