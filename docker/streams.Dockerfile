# streams: reads RTSP/MJPEG/file sources named in the edge config and posts frames as image queries;
# status and metrics on port 8720. The headless OpenCV wheel brings its own FFmpeg.
# Build from the repository root: docker build -f docker/streams.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The edge's packages and OpenCV (no torch) at the exact versions of requirements/streams.lock and
# nothing more (`pip check` fails the build if the lock misses one), in a layer of its own before the
# code, so that a code change reuses it. The code runs from /app (PYTHONPATH): nothing to install.
COPY requirements/streams.lock ./requirements/
RUN pip install --no-deps -r requirements/streams.lock && pip check
COPY common ./common
COPY edge ./edge

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
# The internal token the edge's services share (created by the first to start).
VOLUME ["/data/secrets"]
EXPOSE 8720
CMD ["python", "-m", "edge.streams"]
