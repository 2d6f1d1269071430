# edge-api: the decision tree, the escalation outbox, edge config, status and metrics (port 8718).
# Build from the repository root: docker build -f docker/edge-api.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/edge /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The base dependencies only: no torch at run time.
COPY pyproject.toml README.md ./
COPY common ./common
COPY edge ./edge
RUN pip install . && rm -rf /app/build

USER intellioptics
# The escalation outbox (SQLite) must survive restarts: it is the only copy until the cloud acknowledges.
# /data/secrets: the internal token the edge's services share (created by the first to start).
VOLUME ["/data/edge", "/data/secrets"]
EXPOSE 8718
CMD ["python", "-m", "edge.api"]
