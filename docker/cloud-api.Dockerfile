# cloud-api: the device API, escalation intake, review queue and pages, model registry (port 8000).
# Build from the repository root: docker build -f docker/cloud-api.Dockerfile .
# Before serving it migrates the database and, on the first start, creates the accounts
# (cloud.app.prestart): their passwords and the device API token go into /data/cloud/credentials.json,
# and only that path is printed (CLOUD_BOOTSTRAP_PRINT_SECRETS=false), so no secret stays in
# `docker logs`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CLOUD_BOOTSTRAP_PRINT_SECRETS=false

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/cloud \
    && chown -R intellioptics /data
WORKDIR /app

# The base dependencies only: the cloud answers queries with ONNX Runtime; torch is for training.
# The source stays in /app (the working directory), so migrations and page templates come with it.
COPY pyproject.toml README.md ./
COPY common ./common
COPY cloud ./cloud
RUN pip install . && rm -rf /app/build

USER intellioptics
# Blobs (images, bundles, exports) with the local backend, the first-start credentials, the
# embedded database when DATABASE_URL is unset.
VOLUME ["/data/cloud"]
EXPOSE 8000
CMD ["python", "-m", "cloud.app"]
