"""`python -m edge.updater`: poll the cloud for each configured detector's model; status on
UPDATER_HOST:UPDATER_PORT. SIGTERM lets a poll under way finish (UPDATER_SHUTDOWN_GRACE_S)."""

from __future__ import annotations

from common.http import configure_logging, serve
from common.log_redaction import install_secret_redaction
from edge.updater.app import create_app
from edge.updater.settings import UpdaterSettings


def main() -> None:
    settings = UpdaterSettings()
    configure_logging(settings.log_level)
    install_secret_redaction()
    serve(create_app(settings), settings.host, settings.port, grace_s=5)


if __name__ == "__main__":
    main()
