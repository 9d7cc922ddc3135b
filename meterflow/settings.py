"""All configuration, read from environment variables once.

Defaults point at the native local stack (`meterflow up`), so a newcomer
needs no configuration at all; docker-compose and production override them
through the environment. Every variable is listed in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    topic_events: str = "events.raw"
    topic_dlq: str = "events.dlq"
    topic_alerts: str = "alerts"
    topic_partitions: int = 4
    kafka_produce_timeout_s: float = 5.0
    # Redis
    redis_url: str = "redis://127.0.0.1:16379/0"
    dedup_ttl_s: int = 30 * 24 * 3600
    # ClickHouse (HTTP interface)
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 18123
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    clickhouse_database: str = "meterflow"
    # S3 (MinIO in compose, SeaweedFS natively)
    s3_endpoint: str = "127.0.0.1:19000"
    s3_access_key: str = "meterflow"
    s3_secret_key: str = "meterflow-secret"
    s3_secure: bool = False
    s3_bucket: str = "meterflow-events"
    s3_region: str = "us-east-1"  # signs requests and presigned URLs without asking the server
    # Dataflow
    flow_batch_size: int = 10000  # most Kafka messages per poll: one item through every step (docs/benchmarks.md)
    flow_workers: int = 1  # Bytewax workers in the dataflow process
    sink_retry_max_backoff_s: float = 10.0
    # How long the broker may take to answer one fetch (librdkafka fetch.wait.max.ms).
    # Tansu on S3 answers empty when reading its log takes longer, and a wait shorter
    # than its slowest read stalls the flow for good; an idle flow's freshness costs
    # up to this much, since Tansu holds an empty fetch for the whole wait.
    flow_fetch_wait_ms: int = 500
    # A dataflow with a backlog that reads nothing for this long is reported as
    # stalled (metric, error log, 503 on its /health/ready, degraded API /health).
    flow_stall_after_s: float = 60.0
    # Prometheus /metrics of the dataflow process (0 = off); a multi-process
    # dataflow (-i N) serves process N on port + N. Loopback by default.
    flow_metrics_host: str = "127.0.0.1"
    flow_metrics_port: int = 19464
    # Bytewax recovery: state and Kafka offsets snapshotted every this many
    # seconds into <data_dir>/dataflow-recovery; a restart replays at most that much.
    snapshot_interval_s: int = 5
    recovery_partitions: int = 4
    # API
    api_host: str = "127.0.0.1"
    api_port: int = 3000
    api_workers: int = 1  # uvicorn worker processes
    # Required in X-Admin-Token for /v1/admin/*; empty = open, but then the API
    # only starts on loopback and admits loopback requests only (api.deps).
    admin_token: str = ""
    admin_rate_limit_requests: int = 600  # /v1/admin/* requests per client address per window
    admin_rate_limit_window_s: int = 60
    rate_limit_requests: int = 100
    rate_limit_window_s: int = 60
    api_max_body_bytes: int = 5 * 1024 * 1024  # larger request bodies: 413 before parsing
    # Billing (Stripe): dry run unless a key is set
    stripe_api_key: str = ""
    stripe_api_base: str = ""  # empty = Stripe's own; tests point it at a local stand-in
    stripe_max_network_retries: int = 2
    # JSON object {meterflow customer_id: Stripe customer id}; unmapped customers are
    # created in Stripe on their first live run (mapping kept in Redis `stripe:customers`)
    stripe_customer_map: str = ""
    # Stripe webhook intake (POST /v1/stripe/webhook): the endpoint's signing secret
    # (whsec_...); the route answers 503 while it is empty
    stripe_webhook_secret: str = ""
    # Billing operations (docs/billing.md): a period is closed this long after its end,
    # so late events still reach its invoice; later ones become adjustments
    billing_grace_hours: float = 48.0
    billing_scheduler: bool = False  # `meterflow up` also starts the billing scheduler
    billing_scheduler_interval_s: float = 300.0  # how often the scheduler looks for a closable period
    invoice_url_expiry_s: int = 3600  # lifetime of the presigned PDF links of GET /v1/invoices/{id}
    # Webhooks (python -m meterflow.webhook_worker): the operator's endpoint gets every
    # alert of every customer (off when empty); customers register their own endpoints
    alert_webhook_url: str = ""
    webhook_secret: str = ""  # HMAC-SHA256 signing key; unsigned when empty
    webhook_attempts: int = 5
    webhook_first_backoff_s: float = 1.0  # doubled after each failed try, up to the max
    webhook_max_backoff_s: float = 30.0
    webhook_timeout_s: float = 10.0
    # Customer endpoints resolving to loopback, private, link-local or other
    # non-public addresses are refused (they would reach MeterFlow's own
    # network); local development and the tests allow them.
    webhook_allow_private_urls: bool = False
    # Local native stack
    data_dir: Path = field(default_factory=lambda: Path(".data").resolve())
    log_level: str = "INFO"
    log_json: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `environ` (default: os.environ).

        Each field reads the upper-cased variable of the same name, e.g.
        `kafka_bootstrap_servers` <- `KAFKA_BOOTSTRAP_SERVERS`.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper(), "")
            if raw == "":
                continue
            if f.type == "int":
                values[f.name] = int(raw)
            elif f.type == "float":
                values[f.name] = float(raw)
            elif f.type == "bool":
                values[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
            elif f.type == "Path":
                values[f.name] = Path(raw).resolve()
            else:
                values[f.name] = raw
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            out[f.name.upper()] = str(value)
        return out
