"""Start the API as configured by the environment: `python -m api.serve`.

This is uvicorn (`--factory api.main:create_app`, no access log: the API
logs its own request lines) on API_HOST:API_PORT with API_WORKERS
processes, plus what several workers need for one truthful GET /metrics:
prometheus_client's multiprocess mode, which must be chosen before any
worker imports prometheus_client and needs a directory that no earlier run
left values in. So the directory is emptied here, in the parent, before
the workers start; they inherit PROMETHEUS_MULTIPROC_DIR (api.metrics).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import uvicorn

from api.exposure import AdminExposed, check_admin_exposure
from meterflow.settings import Settings


def multiprocess_dir(settings: Settings) -> Path:
    """Per port: two APIs on one data directory (the tests run a second
    one beside the session's) must not add up each other's values."""
    return settings.data_dir / "api-metrics" / str(settings.api_port)


def main() -> None:
    settings = Settings.from_env()
    try:
        check_admin_exposure(settings)  # before any worker starts: one clear line, no traceback per worker
    except AdminExposed as exc:
        raise SystemExit(f"api: refusing to start: {exc}") from exc
    if settings.api_workers > 1:
        path = multiprocess_dir(settings)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        access_log=False,
    )


if __name__ == "__main__":
    main()
