# demo-models: a one-shot job that trains the small demo detectors and writes their bundles into the
# /data/models volume shared with inference (compose profile "demo"). It needs the training extra
# (torch), which the edge services do not.
# Build from the repository root: docker build -f docker/demo-models.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models \
    && chown -R intellioptics /data
WORKDIR /app

# The dependency layer, before the code, so that a code change reuses it: pyproject.toml's training group
# at the exact versions of requirements/trainer.lock (PIP_CONSTRAINT), as in the trainer's image, with the
# project's metadata but none of its code, which runs from /app (PYTHONPATH). The extra index offers CPU
# builds of torch (the lock's version, "+cpu" wins the version comparison), so the image does not pull
# the CUDA build the demo does not need.
COPY pyproject.toml ./
COPY requirements/trainer.lock ./requirements/
# pyproject.toml names README.md, which the metadata alone does not need: a stand-in, so that a
# documentation change does not rebuild the layer either.
RUN echo "IntelliOptics (the README is in the repository)" > README.md
RUN PIP_CONSTRAINT=requirements/trainer.lock \
        pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[training]" \
    && rm -rf /app/build
COPY common ./common
COPY training ./training

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
VOLUME ["/data/models"]
CMD ["python", "-m", "training.demo_bundles", "--model-root", "/data/models"]
