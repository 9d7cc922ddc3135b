"""Creates what MeterFlow stores into: Kafka topics, ClickHouse tables, the S3 bucket.

Every function is idempotent, so `meterflow init`, the API and the dataflow
can all call them at start-up in any order.
"""

from __future__ import annotations

import structlog
from clickhouse_connect.driver.client import Client as ClickHouseClient
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from minio import Minio
from minio.error import S3Error

from meterflow.clients import clickhouse_client, kafka_admin, s3_client
from meterflow.settings import Settings

log = structlog.get_logger(__name__)

# ReplacingMergeTree collapses rows with the same sorting key: a batch the
# dataflow inserts twice after a crash (at-least-once output) is counted
# once. The key begins with what every usage query filters on. Queries that
# must be exact read with FINAL. `timestamp` is in the key, which is sound
# because a replay of a message repeats the same timestamp.
EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.events
(
    transaction_id String,
    customer_id    String,
    event_type     LowCardinality(String),
    timestamp      DateTime64(3, 'UTC'),
    properties     Map(String, String),
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (customer_id, event_type, timestamp, transaction_id)
"""

# One row per alert id: a detector that re-detects the same finding after a
# restart inserts the same id again, and FINAL shows it once.
ALERTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id     String,
    customer_id  String,
    metric       LowCardinality(String),
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    score        Nullable(Float64),
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    evidence     String,
    created_at   DateTime64(3, 'UTC'),
    event_time   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, alert_id)
"""

ALERTS_COLUMNS = [
    "alert_id", "customer_id", "metric", "kind", "severity", "score",
    "window_start", "window_end", "evidence", "created_at", "event_time",
]  # fmt: skip

EVENTS_COLUMNS = ["transaction_id", "customer_id", "event_type", "timestamp", "properties"]


def ensure_topics(admin: AdminClient, settings: Settings, timeout_s: float = 10.0) -> None:
    wanted = [settings.topic_events, settings.topic_dlq, settings.topic_alerts]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [
        NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1)
        for name in wanted
        if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("topic_created", topic=name, partitions=settings.topic_partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def ensure_clickhouse(client: ClickHouseClient, settings: Settings) -> None:
    db = settings.clickhouse_database
    # Identifiers cannot be bound parameters; the database name comes from
    # configuration, never from a request.
    client.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")  # sql-ok
    client.command(EVENTS_DDL.format(db=f"`{db}`"))
    client.command(ALERTS_DDL.format(db=f"`{db}`"))


def ensure_bucket(s3: Minio, settings: Settings) -> None:
    try:
        if not s3.bucket_exists(settings.s3_bucket):
            s3.make_bucket(settings.s3_bucket)
            log.info("bucket_created", bucket=settings.s3_bucket)
    except S3Error as exc:
        if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


def ensure_all(settings: Settings) -> None:
    """Topics, tables and bucket, each created if missing."""
    ensure_topics(kafka_admin(settings), settings)
    ensure_clickhouse(clickhouse_client(settings), settings)
    ensure_bucket(s3_client(settings), settings)
