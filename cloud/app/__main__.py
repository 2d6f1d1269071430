"""`python -m cloud.app`: migrate and seed (prestart), then serve on CLOUD_HOST:CLOUD_PORT."""

from __future__ import annotations

import asyncio
from typing import Any

from cloud.app.app import create_app
from cloud.app.prestart import prestart
from cloud.app.settings import CloudSettings
from common.http import configure_logging, serve


def main() -> None:
    settings = CloudSettings()
    configure_logging(settings.log_level)
    asyncio.run(prestart(settings))
    # Several workers need an import string: each worker process builds its own app from the environment.
    app: Any = create_app(settings) if settings.workers == 1 else "cloud.app.app:create_app"
    serve(app, settings.host, settings.port, factory=settings.workers > 1, workers=settings.workers)


if __name__ == "__main__":
    main()
