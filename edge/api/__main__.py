"""`python -m edge.api`: serve on EDGE_HOST:EDGE_PORT."""

from __future__ import annotations

import uvicorn

from common.http import configure_logging
from edge.api.app import create_app
from edge.api.settings import EdgeSettings


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
