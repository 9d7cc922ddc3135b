"""One event's whole path, for real: HTTP -> Kafka -> Bytewax -> ClickHouse + S3."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from operators.dedup import INGEST_ID_HEADER, dedup_key
from tests.integration.conftest import make_event, now_ms, stored_count, wait_for


def produce_raw(settings, value: bytes, key: bytes = b"k", headers=None) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(settings.topic_events, value=value, key=key, headers=headers)
    assert producer.flush(10) == 0


def s3_backup_lines(s3, settings, day: str) -> list[dict]:
    lines = []
    for obj in s3.list_objects(settings.s3_bucket, prefix=f"events/{day}/", recursive=True):
        body = s3.get_object(settings.s3_bucket, obj.object_name).read()
        lines += [orjson.loads(line) for line in body.splitlines() if line]
    return lines


def test_posted_batch_lands_in_clickhouse_s3_and_redis(api, customer, settings, clickhouse, s3, redis):
    events = [make_event(customer.customer_id, properties={"bytes": i, "region": "eu"}) for i in range(250)]
    response = api.post("/v1/events", json={"events": events}, headers=customer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 250, "duplicates": 0, "failed": []}

    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 250, what="rows")
    rows = clickhouse.query(
        "SELECT transaction_id, event_type, toUnixTimestamp64Milli(timestamp), properties"
        " FROM meterflow.events FINAL WHERE customer_id = {c:String}",
        parameters={"c": customer.customer_id},
    ).result_rows
    by_tid = {tid: (etype, ts, props) for tid, etype, ts, props in rows}
    for event in events:
        etype, ts, props = by_tid[event["transaction_id"]]
        assert (etype, ts) == ("api_request", event["timestamp"])
        assert props == {"bytes": str(event["properties"]["bytes"]), "region": "eu"}

    day = datetime.fromtimestamp(events[0]["timestamp"] / 1000, tz=timezone.utc).strftime("%Y/%m/%d")
    wanted = {e["transaction_id"] for e in events}
    backed_up = wait_for(
        lambda: wanted <= {l["transaction_id"] for l in s3_backup_lines(s3, settings, day)},
        what="S3 backup",
    )
    assert backed_up
    assert all(redis.exists(dedup_key(customer.customer_id, tid)) for tid in wanted)


def test_same_transaction_id_twice_is_counted_once(api, customer, settings, clickhouse):
    event = make_event(customer.customer_id)
    first = api.post("/v1/events", json={"events": [event]}, headers=customer.headers).json()
    assert first == {"accepted": 1, "duplicates": 0, "failed": []}
    second = api.post("/v1/events", json={"events": [event, event]}, headers=customer.headers).json()
    assert second == {"accepted": 0, "duplicates": 2, "failed": []}

    # A copy produced straight to Kafka (another ingest id) is dropped by the dataflow's dedup.
    produce_raw(settings, orjson.dumps(event), headers=[(INGEST_ID_HEADER, b"another-copy")])
    marker = make_event(customer.customer_id)
    produce_raw(settings, orjson.dumps(marker))
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 2, what="marker row")
    # Not even an unmerged second row: the duplicate never reached ClickHouse.
    assert stored_count(clickhouse, settings, customer.customer_id, final=False) == 2


def test_replayed_message_is_stored_once(customer, settings, clickhouse, redis):
    """The same Kafka copy read twice (a crash replay) passes dedup and collapses in ClickHouse."""
    event = make_event(customer.customer_id)
    for _ in range(2):
        produce_raw(settings, orjson.dumps(event), headers=[(INGEST_ID_HEADER, b"copy-1")])
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 1, what="row")
    assert redis.get(dedup_key(customer.customer_id, event["transaction_id"])) == b"copy-1"
    clickhouse.command("OPTIMIZE TABLE meterflow.events FINAL")
    assert stored_count(clickhouse, settings, customer.customer_id, final=False) == 1


def read_topic(settings, topic: str, match: bytes, timeout_s: float = 30) -> dict:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])

        def find():
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None and match in msg.value():
                    return orjson.loads(msg.value())
            return None

        return wait_for(find, timeout_s, what=f"message in {topic}")
    finally:
        consumer.close()


def test_malformed_message_goes_to_dlq_and_the_flow_keeps_going(api, customer, settings, clickhouse):
    token = uuid.uuid4().hex
    produce_raw(settings, b'{"this is not": json ' + token.encode())
    bad_id = make_event(customer.customer_id, transaction_id=f"bad id {token}")
    produce_raw(settings, orjson.dumps(bad_id))

    dead = read_topic(settings, settings.topic_dlq, token.encode())
    assert "malformed JSON" in dead["reason"] or "only letters" in dead["reason"]
    assert dead["source"]["topic"] == settings.topic_events

    good = make_event(customer.customer_id)
    assert api.post("/v1/events", json={"events": [good]}, headers=customer.headers).status_code == 200
    wait_for(lambda: stored_count(clickhouse, settings, customer.customer_id) == 1, what="good row")
