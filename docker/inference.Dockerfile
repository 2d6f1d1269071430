# inference: ONNX models of the detectors behind `POST /infer` (port 8001).
# Build from the repository root: docker build -f docker/inference.Dockerfile .
# Models are not baked in: they live in the /data/models volume, filled by the model updater from the
# cloud, or with the demo bundles (docker/demo-models.Dockerfile, compose profile "demo").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/models /data/secrets \
    && chown -R intellioptics /data
WORKDIR /app

# The base dependencies only: the runtime is ONNX Runtime, torch is for training.
COPY pyproject.toml README.md ./
COPY common ./common
COPY edge ./edge
RUN pip install . && rm -rf /app/build

USER intellioptics
# /data/secrets: the internal token the edge's services share (created by the first to start).
VOLUME ["/data/models", "/data/secrets"]
EXPOSE 8001
CMD ["python", "-m", "edge.inference"]
