"""`python -m edge.inference`: serve on INFERENCE_HOST:INFERENCE_PORT."""

from __future__ import annotations

from common.http import configure_logging, serve
from common.log_redaction import install_secret_redaction
from edge.inference.app import create_app
from edge.inference.settings import InferenceSettings


def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.log_level)
    install_secret_redaction()
    # Nothing proxies to this service: skip the per-request forwarded-header scan.
    serve(create_app(settings), settings.host, settings.port, proxy_headers=False)


if __name__ == "__main__":
    main()
