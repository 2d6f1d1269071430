# updater: polls the cloud's model registry per configured detector, verifies and installs bundles into
# the model volume it shares with inference, asks inference to swap; status on port 8721.
# Build from the repository root: docker build -f docker/updater.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# The same uid as inference: both read and write the shared /data/models volume.
RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The edge's packages (no torch, no OpenCV) at the exact versions of requirements/edge.lock and
# nothing more (`pip check` fails the build if the lock misses one), in a layer of its own before the
# code, so that a code change reuses it. The code runs from /app (PYTHONPATH): nothing to install.
COPY requirements/edge.lock ./requirements/
RUN pip install --no-deps -r requirements/edge.lock && pip check
COPY common ./common
COPY edge ./edge

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
# /data/secrets: the internal token the edge's services share (created by the first to start).
VOLUME ["/data/models", "/data/secrets"]
EXPOSE 8721
CMD ["python", "-m", "edge.updater"]
