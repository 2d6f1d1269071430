# cloud-api: the device API, escalation intake, review queue and pages, model registry (port 8000).
# Build from the repository root: docker build -f docker/cloud-api.Dockerfile .
# Before serving it migrates the database and, on the first start, creates the accounts
# (cloud.app.prestart): their passwords and the device API token go into /data/cloud/credentials.json,
# and only that path is printed (CLOUD_BOOTSTRAP_PRINT_SECRETS=false), so no secret stays in
# `docker logs`.
FROM python:3.11-slim

# CLOUD_BOOTSTRAP_PRINT_SECRETS is a switch (print the first start's secrets or not), not a secret.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    CLOUD_BOOTSTRAP_PRINT_SECRETS=false

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/cloud \
    && chown -R intellioptics /data
WORKDIR /app

# The cloud's packages (it answers queries with ONNX Runtime; no torch, no OpenCV) at the exact
# versions of requirements/cloud.lock and nothing more (`pip check` fails the build if the lock misses
# one), in a layer of its own before the code, so that a code change reuses it. The code runs from
# /app (PYTHONPATH): nothing to install, and migrations and page templates come with it.
COPY requirements/cloud.lock ./requirements/
RUN pip install --no-deps -r requirements/cloud.lock && pip check
COPY common ./common
COPY cloud ./cloud

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
# Blobs (images, bundles, exports) with the local backend, the first-start credentials, the
# embedded database when DATABASE_URL is unset.
VOLUME ["/data/cloud"]
EXPOSE 8000
CMD ["python", "-m", "cloud.app"]
