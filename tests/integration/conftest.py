"""One real local system per test session: Redis, Tansu (Kafka protocol),
ClickHouse, SeaweedFS (S3), the Bytewax dataflow and the API, each a real
process on loopback ports chosen free, data in a temporary directory.

It is the same Stack that `meterflow up` starts, so the tests exercise the
system as a newcomer runs it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, Iterator

import httpx
import pytest

from meterflow.clients import clickhouse_client, kafka_admin, redis_client, s3_client
from meterflow.local import local_stack
from meterflow.settings import Settings
from meterflow.stack import Stack, StackConfig, free_port
from meterflow.storage import ensure_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Settings]]:
    config = StackConfig.ephemeral(tmp_path_factory.mktemp("stack"))
    base = Settings(
        api_port=free_port(),
        flow_metrics_port=free_port(),
        data_dir=config.data_dir,
        kafka_produce_timeout_s=3.0,
        sink_retry_max_backoff_s=1.0,
        snapshot_interval_s=1,
        stripe_webhook_secret="whsec_session",
        webhook_allow_private_urls=True,  # the tests' receivers listen on loopback  # so POST /v1/stripe/webhook verifies (and refuses) rather than 503
        log_level="DEBUG",
    )
    settings = config.settings(base)
    stack = local_stack(config, settings)
    try:
        stack.start()
        ensure_all(settings)
        yield stack, settings
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(system: tuple[Stack, Settings]) -> Stack:
    return system[0]


@pytest.fixture(scope="session")
def settings(system: tuple[Stack, Settings]) -> Settings:
    return system[1]


@pytest.fixture(scope="session")
def api(settings: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{settings.api_host}:{settings.api_port}", timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def clickhouse(settings: Settings):
    client = clickhouse_client(settings)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis(settings: Settings):
    client = redis_client(settings)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3(settings: Settings):
    return s3_client(settings)


@pytest.fixture(scope="session")
def admin(settings: Settings):
    return kafka_admin(settings)


@dataclasses.dataclass
class Customer:
    customer_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


def new_customer(api: httpx.Client, prefix: str = "cust") -> Customer:
    """A customer never seen before, with its own key (the session's admin
    routes are open: it sets no ADMIN_TOKEN)."""
    customer_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    response = api.post("/v1/admin/keys", json={"customer_id": customer_id, "name": "test"})
    assert response.status_code == 201, response.text
    return Customer(customer_id, response.json()["api_key"])


@pytest.fixture
def customer(api: httpx.Client) -> Customer:
    """A fresh customer with its own key, so tests never see each other's data."""
    return new_customer(api)


def now_ms() -> int:
    return int(time.time() * 1000)


def make_event(customer_id: str, **overrides: Any) -> dict[str, Any]:
    event = {
        "transaction_id": f"tx-{uuid.uuid4().hex}",
        "customer_id": customer_id,
        "event_type": "api_request",
        "timestamp": now_ms(),
        "properties": {"bytes": 100, "endpoint": "/v1/things"},
    }
    event.update(overrides)
    return event


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll until `check()` is truthy; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value: {value!r})")
        time.sleep(0.1)


def stored_count(clickhouse, settings: Settings, customer_id: str, final: bool = True) -> int:
    table = f"{settings.clickhouse_database}.events"
    query = f"SELECT count() FROM {table} {'FINAL' if final else ''} WHERE customer_id = {{c:String}}"  # sql-ok
    return clickhouse.query(query, parameters={"c": customer_id}).result_rows[0][0]
