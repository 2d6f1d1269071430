"""`python -m edge.streams`: read the streams in the edge config; status on STREAMS_HOST:STREAMS_PORT."""

from __future__ import annotations

import os

# OpenCV and FFmpeg print their own unstructured lines (one per failed open of an unreachable camera);
# the worker reports each failure itself, in the log and in /status. Set these to debug a source.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

from common.http import configure_logging, serve
from common.log_redaction import install_secret_redaction
from edge.streams.app import create_app
from edge.streams.settings import StreamsSettings


def main() -> None:
    settings = StreamsSettings()
    configure_logging(settings.log_level)
    install_secret_redaction()
    serve(create_app(settings), settings.host, settings.port, grace_s=5)


if __name__ == "__main__":
    main()
