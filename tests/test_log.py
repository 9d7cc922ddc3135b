"""meterflow.log: every process's log lines, whoever swaps sys.stderr."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import structlog

from meterflow.log import configure_logging


@pytest.fixture
def restored_logging():
    """This test configures logging in the pytest process: put back what was there."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_go_to_the_current_stderr_after_the_one_seen_at_configuration_is_closed(
    restored_logging, monkeypatch
):
    # What pytest's capsys does around a test that runs `meterflow simulate`
    # (which configures logging): that stderr is closed when the test ends.
    configured_with = io.StringIO()
    monkeypatch.setattr(sys, "stderr", configured_with)
    configure_logging("INFO", json=True)
    configured_with.close()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)

    structlog.get_logger("meterflow.test").info("topics_ready", topics=2)
    logging.getLogger("meterflow.test.stdlib").warning("stdlib line")

    written = now.getvalue()
    assert '"event": "topics_ready"' in written and '"topics": 2' in written
    assert '"event": "stdlib line"' in written
    assert "Logging error" not in written
