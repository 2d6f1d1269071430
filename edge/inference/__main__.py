"""`python -m edge.inference`: serve on INFERENCE_HOST:INFERENCE_PORT."""

from __future__ import annotations

import uvicorn

from common.http import configure_logging
from edge.inference.app import create_app
from edge.inference.settings import InferenceSettings


def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # nothing proxies to this service: skip the per-request header scan
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
