"""`meterflow simulate` against the session's real system: the API path and the Kafka path."""

import time
import uuid

import pytest

from meterflow import simulate
from meterflow.cli import main
from tests.integration.conftest import stored_count, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(settings, monkeypatch):
    """The CLI reads its settings from the environment, as it does for users."""
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)


def test_history_through_the_api_lands_in_clickhouse_once(cli_env, api, clickhouse, settings, capsys):
    prefix = f"sim{uuid.uuid4().hex[:8]}"
    argv = ["simulate", "history", "--customers", "2", "--days", "5", "--events-per-day", "150"]
    argv += ["--prefix", prefix]
    assert main(argv) == 0
    # The same generation, to know what should have arrived.
    profiles = simulate.make_profiles(2, 42, 150.0, prefix)
    today = simulate.utc_today(int(time.time() * 1000))
    expected = simulate.history(profiles, simulate.history_days(today, 5), 42).counts()
    assert set(expected) == {f"{prefix}-0001", f"{prefix}-0002"} and all(n > 0 for n in expected.values())
    assert f"accepted {sum(expected.values())}, duplicates 0, failed 0" in capsys.readouterr().out
    for customer_id, count in expected.items():
        wait_for(lambda: stored_count(clickhouse, settings, customer_id) == count, what=f"{customer_id} rows")

    # Sent again, the same simulation is recognised: duplicates, nothing counted twice.
    assert main(argv) == 0
    assert f"accepted 0, duplicates {sum(expected.values())}, failed 0" in capsys.readouterr().out
    for customer_id, count in expected.items():
        assert stored_count(clickhouse, settings, customer_id) == count


def test_fraud_via_kafka_reaches_the_dataflow(cli_env, clickhouse, settings, capsys):
    prefix = f"sim{uuid.uuid4().hex[:8]}"
    argv = ["simulate", "fraud", "--via", "kafka", "--customers", "3", "--targets", "2", "--prefix", prefix]
    assert main(argv) == 0
    out = capsys.readouterr().out
    profiles = simulate.make_profiles(3, 42, 200.0, prefix)
    now_ms = int(time.time() * 1000)
    (incident,) = simulate.fraud([profiles[1]], simulate.fraud_day(now_ms), 42).incidents
    assert f"incident: {incident.describe()}" in out
    wait_for(
        lambda: stored_count(clickhouse, settings, incident.customer_id) == incident.events,
        what="the stolen key's events in ClickHouse",
    )
    assert stored_count(clickhouse, settings, f"{prefix}-0001") == 0  # only the target


def test_populations_history_and_a_stolen_night_after_it_land_once(cli_env, clickhouse, settings, capsys):
    """Every population's month through Kafka, then a stolen key on a batch
    customer: its night adds to the history's rows, on none of its days."""
    prefix = f"sim{uuid.uuid4().hex[:8]}"
    common = ["--via", "kafka", "--customers", "5", "--events-per-day", "40", "--prefix", prefix,
              "--populations", "office,247,batch,tiny,holiday"]  # fmt: skip
    assert main(["simulate", "history", "--days", "30", *common]) == 0
    out = capsys.readouterr().out
    now_ms = int(time.time() * 1000)
    today = simulate.utc_today(now_ms)
    profiles = simulate.make_profiles(5, 42, 40.0, prefix, simulate.parse_mix("office,247,batch,tiny,holiday"), today)
    history = simulate.history(profiles, simulate.history_days(today, 30), 42)
    assert {p.population for p in profiles} == {"office", "247", "batch", "tiny", "holiday"}
    assert sorted(b.kind for b in history.benign) == ["batch_shift", "holiday"]
    for look_alike in history.benign:
        assert f"benign: {look_alike.describe()}" in out
    expected = history.counts()
    for customer_id, count in expected.items():
        wait_for(lambda: stored_count(clickhouse, settings, customer_id) == count, what=f"{customer_id} rows")

    (batch,) = [p for p in profiles if p.population == "batch"]
    assert main(["simulate", "fraud", "--targets", str(batch.number), *common]) == 0
    (incident,) = simulate.fraud([batch], simulate.fraud_day(now_ms), 42).incidents
    assert f"incident: {incident.describe()}" in capsys.readouterr().out
    total = expected[batch.customer_id] + incident.events
    wait_for(lambda: stored_count(clickhouse, settings, batch.customer_id) == total, what="history + stolen night")
    last_history_day = simulate.history_days(today, 30)[-1]
    assert batch.local_day(incident.start_ms) > last_history_day
