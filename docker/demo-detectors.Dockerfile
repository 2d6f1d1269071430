# demo-detectors: a one-shot job of the cloud (compose profile "demo") that trains the small demo
# detectors' bundles into /data/models (once: a volume keeps them) and registers the detectors and
# their bundles in the cloud (cloud/app/seed_demo.py: the database, then the model registry of
# cloud-api), as `make run` does. Idempotent.
# Build from the repository root: docker build -f docker/demo-detectors.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    OMP_WAIT_POLICY=PASSIVE

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models \
    && chown -R intellioptics /data
WORKDIR /app

# Training (torch, CPU build: see docker/demo-models.Dockerfile) and the cloud's code, which seeds the
# database directly: pyproject.toml's training and cloud groups at the exact versions of
# requirements/demo-detectors.lock (PIP_CONSTRAINT), in a layer before the code, so that a code change
# reuses it. The code runs from /app (PYTHONPATH).
COPY pyproject.toml ./
COPY requirements/demo-detectors.lock ./requirements/
# pyproject.toml names README.md, which the metadata alone does not need: a stand-in, so that a
# documentation change does not rebuild the layer either.
RUN echo "IntelliOptics (the README is in the repository)" > README.md
RUN PIP_CONSTRAINT=requirements/demo-detectors.lock \
        pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[training,cloud]" \
    && rm -rf /app/build
COPY common ./common
COPY cloud ./cloud
COPY training ./training
COPY --chmod=755 docker/demo-detectors.sh /usr/local/bin/demo-detectors

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
VOLUME ["/data/models"]
CMD ["demo-detectors"]
