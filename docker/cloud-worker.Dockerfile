# cloud-worker: background jobs of the cloud (review lease expiry, retrain triggers, exports).
# Build from the repository root: docker build -f docker/cloud-worker.Dockerfile .
# Stateless: it shares the database and the blob store with cloud-api and runs as many replicas as
# needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/cloud \
    && chown -R intellioptics /data
WORKDIR /app

# The cloud's packages (no torch: training runs in its own service) at the exact versions of
# requirements/cloud.lock and nothing more (`pip check` fails the build if the lock misses one), in a
# layer of its own before the code, so that a code change reuses it. The code runs from /app
# (PYTHONPATH): nothing to install.
COPY requirements/cloud.lock ./requirements/
RUN pip install --no-deps -r requirements/cloud.lock && pip check
COPY common ./common
COPY cloud ./cloud

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
# Shared with cloud-api: blobs with the local backend.
VOLUME ["/data/cloud"]
CMD ["python", "-m", "cloud.worker"]
