"""Structured logging for every MeterFlow process (JSON lines by default)."""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """Writes to `sys.stderr` as it is at each write, not as it was when
    logging was configured: whoever swaps sys.stderr (pytest's capture, a
    test's redirect) and closes the old one must not leave every later log
    line failing with "I/O operation on closed file"."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# One instance: structlog keeps one write lock per file object.
_STDERR = _CurrentStderr()


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library through one renderer to stderr."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
