# streams: reads RTSP/MJPEG/file sources named in the edge config and posts frames as image queries;
# status and metrics on port 8720. The headless OpenCV wheel brings its own FFmpeg.
# Build from the repository root: docker build -f docker/streams.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The base dependencies only: no torch at run time.
COPY pyproject.toml README.md ./
COPY common ./common
COPY edge ./edge
RUN pip install . && rm -rf /app/build

USER intellioptics
# The internal token the edge's services share (created by the first to start).
VOLUME ["/data/secrets"]
EXPOSE 8720
CMD ["python", "-m", "edge.streams"]
