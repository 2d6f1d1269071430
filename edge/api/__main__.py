"""`python -m edge.api`: serve on EDGE_HOST:EDGE_PORT."""

from __future__ import annotations

from common.http import configure_logging, serve
from common.log_redaction import install_secret_redaction
from edge.api.app import create_app
from edge.api.settings import EdgeSettings


def main() -> None:
    settings = EdgeSettings()
    configure_logging(settings.log_level)
    install_secret_redaction()
    serve(create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
