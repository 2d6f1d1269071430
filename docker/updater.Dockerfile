# updater: polls the cloud's model registry per configured detector, verifies and installs bundles into
# the model volume it shares with inference, asks inference to swap; status on port 8721.
# Build from the repository root: docker build -f docker/updater.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same uid as inference: both read and write the shared /data/models volume.
RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The base dependencies only: no torch at run time.
COPY pyproject.toml README.md ./
COPY common ./common
COPY edge ./edge
RUN pip install . && rm -rf /app/build

USER intellioptics
# /data/secrets: the internal token the edge's services share (created by the first to start).
VOLUME ["/data/models", "/data/secrets"]
EXPOSE 8721
CMD ["python", "-m", "edge.updater"]
