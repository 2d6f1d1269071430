# demo-models: a one-shot job that trains the small demo detectors and writes their bundles into the
# /data/models volume shared with inference (compose profile "demo"). It needs the training extra
# (torch), which the edge services do not.
# Build from the repository root: docker build -f docker/demo-models.Dockerfile .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models \
    && chown -R intellioptics /data
WORKDIR /app

# The extra index offers CPU builds of torch (pyproject's pinned version, "+cpu" wins the version
# comparison), so the image does not pull the CUDA build the demo does not need.
COPY pyproject.toml README.md ./
COPY common ./common
COPY training ./training
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[training]" \
    && rm -rf /app/build

USER intellioptics
VOLUME ["/data/models"]
CMD ["python", "-m", "training.demo_bundles", "--model-root", "/data/models"]
