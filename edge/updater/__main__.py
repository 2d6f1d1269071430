"""`python -m edge.updater`: poll the cloud for each configured detector's model; status on
UPDATER_HOST:UPDATER_PORT. SIGTERM lets a poll under way finish (UPDATER_SHUTDOWN_GRACE_S)."""

from __future__ import annotations

import uvicorn

from common.http import configure_logging
from edge.updater.app import create_app
from edge.updater.settings import UpdaterSettings


def main() -> None:
    settings = UpdaterSettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
