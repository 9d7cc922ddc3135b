"""Factories for the clients of the four services, built from `Settings`.

One place decides timeouts and options, so the API, the dataflow, the CLI
and the tests talk to the services the same way.
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
import redis
from clickhouse_connect.driver.client import Client as ClickHouseClient
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from minio import Minio

from meterflow.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
    )


def clickhouse_client(settings: Settings, **kwargs: Any) -> ClickHouseClient:
    return clickhouse_connect.get_client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password,
        connect_timeout=5,
        send_receive_timeout=60,
        # Each process keeps one client; sessions would serialise its threads.
        autogenerate_session_id=False,
        **kwargs,
    )


def s3_client(settings: Settings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def kafka_admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})


def kafka_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent producer: acks from all replicas, no duplicates on retry."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.kafka_produce_timeout_s * 1000),
    }
    config.update(overrides)
    return Producer(config)
