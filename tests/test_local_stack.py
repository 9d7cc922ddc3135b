"""Which processes `meterflow up` runs, from the settings alone (nothing is started)."""

from pathlib import Path

from meterflow.local import local_stack
from meterflow.settings import Settings
from meterflow.stack import StackConfig


def names(settings: Settings, tmp_path: Path) -> list[str]:
    return list(local_stack(StackConfig.ephemeral(tmp_path), settings).names)


def test_billing_scheduler_runs_only_when_asked_for(tmp_path):
    assert "billing" not in names(Settings(data_dir=tmp_path), tmp_path)
    with_scheduler = names(Settings(data_dir=tmp_path, billing_scheduler=True), tmp_path)
    assert {"dataflow", "webhooks", "api", "billing"} <= set(with_scheduler)
