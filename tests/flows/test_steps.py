"""The dataflow's pure steps, driven without Bytewax or services."""

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message

from flows.clickhouse_sink import event_columns
from flows.events import decode_batch
from flows.messages import DeadLetter, EventBatch
from meterflow.retry import retry_forever
from flows.s3_sink import backup_objects
from operators.dedup import INGEST_ID_HEADER
from operators.events import UsageEvent

NOW = 1_760_000_000_000  # 2025-10-09T08:53:20Z


def message(value: bytes, offset: int = 7, headers=None, ts: int = NOW) -> Message:
    return Message(
        key=b"cust-1",
        value=value,
        topic="events.raw",
        headers=headers,
        partition=2,
        offset=offset,
        timestamp=(TIMESTAMP_CREATE_TIME, ts),
    )


def valid_json(tid: str = "tx-1", ts: int = NOW) -> bytes:
    return orjson.dumps(
        {"transaction_id": tid, "customer_id": "cust-1", "event_type": "api_request", "timestamp": ts}
    )


def test_decode_keeps_valid_events_with_their_ingest_id():
    out = decode_batch([message(valid_json(), headers=[(INGEST_ID_HEADER, b"abc123")])])
    assert out == [EventBatch([UsageEvent("tx-1", "cust-1", "api_request", NOW, {})], ["abc123"])]


def test_message_without_header_is_identified_by_its_position():
    (batch,) = decode_batch([message(valid_json(), offset=41)])
    assert batch.ingest_ids == ["events.raw:2:41"]


def test_a_poll_is_one_batch_of_its_valid_events_and_a_dead_letter_per_invalid_one():
    polled = [message(valid_json("tx-a"), offset=1), message(b"{broken", offset=2), message(valid_json("tx-b"), offset=3)]
    batch, dead = decode_batch(polled)
    assert [e.transaction_id for e in batch.events] == ["tx-a", "tx-b"]
    assert batch.ingest_ids == ["events.raw:2:1", "events.raw:2:3"]
    assert isinstance(dead, DeadLetter) and dead.offset == 2


def test_consumer_errors_are_skipped_not_dead_lettered():
    error = Message(error=KafkaError(KafkaError._TRANSPORT))
    (batch,) = decode_batch([error, message(valid_json())])
    assert len(batch) == 1


def test_bad_messages_become_dead_letters_with_reason_and_position():
    out = decode_batch([message(b"{broken", offset=3), message(valid_json(tid="bad id"), offset=4)])
    assert [type(x) for x in out] == [DeadLetter, DeadLetter]
    assert "malformed JSON" in out[0].reason and out[0].offset == 3
    assert "only letters" in out[1].reason
    record = orjson.loads(out[0].to_json())
    assert record["value"] == "{broken"
    assert record["source"] == {"topic": "events.raw", "partition": 2, "offset": 3}


def test_binary_garbage_is_kept_in_the_dead_letter_as_base64():
    (dead,) = decode_batch([message(b"\xff\x00\xfe")])
    assert orjson.loads(dead.to_json())["value_base64"] == "/wD+"


def test_validation_is_relative_to_the_produce_time_not_the_wall_clock():
    # An event that was fresh when produced stays valid when replayed much later.
    old = NOW - 40 * 24 * 3600 * 1000
    (item,) = decode_batch([message(valid_json(ts=old), ts=old + 1000)])
    assert isinstance(item, EventBatch)


def test_backup_objects_split_a_batch_by_event_day():
    day2 = NOW + 24 * 3600 * 1000
    batches = [
        EventBatch([UsageEvent("a", "c", "api_request", NOW, {}), UsageEvent("b", "c", "api_request", day2, {"bytes": 3})],
                   ["i1", "i2"]),
        EventBatch([UsageEvent("c", "c", "api_request", NOW, {})], ["i3"]),
    ]  # fmt: skip
    objects = backup_objects(batches, now_ms=123)
    assert sorted(k.rsplit("/", 1)[0] for k in objects) == ["events/2025/10/09", "events/2025/10/10"]
    for key, body in objects.items():
        assert key.split("/")[-1].startswith("batch_123_") and key.endswith(".ndjson")
        lines = [orjson.loads(line) for line in body.splitlines()]
        assert all("ingest_id" in line for line in lines)
    day1 = next(body for key, body in objects.items() if "/10/09/" in key)
    assert [orjson.loads(line) for line in day1.splitlines()] == [
        {"transaction_id": "a", "customer_id": "c", "event_type": "api_request", "timestamp": NOW, "properties": {},
         "ingest_id": "i1"},
        {"transaction_id": "c", "customer_id": "c", "event_type": "api_request", "timestamp": NOW, "properties": {},
         "ingest_id": "i3"},
    ]  # fmt: skip


def test_a_batch_keeps_the_flagged_events_with_their_ingest_ids():
    batch = EventBatch([UsageEvent(t, "c", "api_request", NOW, {}) for t in "abc"], ["i1", "i2", "i3"])
    kept = batch.keep([True, False, True])
    assert [e.transaction_id for e in kept.events] == ["a", "c"] and kept.ingest_ids == ["i1", "i3"]


def test_event_columns_keep_property_values_exact():
    batches = [
        EventBatch([UsageEvent("a", "c", "api_request", NOW, {"bytes": 10, "ok": True, "r": 0.1, "s": "x"})], ["i"]),
        EventBatch([UsageEvent("b", "d", "storage", NOW + 1)], ["j"]),
    ]
    tids, customers, types, stamps, props = event_columns(batches)
    assert (list(tids), list(customers), list(types), list(stamps)) == (
        ["a", "b"], ["c", "d"], ["api_request", "storage"], [NOW, NOW + 1]
    )  # fmt: skip
    assert props == [{"bytes": "10", "ok": "true", "r": "0.1", "s": "x"}, {}]


def test_retry_forever_retries_until_success_with_capped_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 6:
            raise ConnectionError("down")
        return "done"

    assert retry_forever(flaky, "test", max_backoff_s=0.5, sleep=sleeps.append) == "done"
    assert len(calls) == 6
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5]
