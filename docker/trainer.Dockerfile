# trainer: leases training jobs from the cloud, trains on the GPU when there is one (else on the CPU),
# and registers the candidate bundles with their reports (python -m training.service).
# Build from the repository root: docker build -f docker/trainer.Dockerfile .
#
# TORCH_VARIANT chooses the torch build:
#   cpu  (default) the CPU build, from PyTorch's CPU index (pyproject's pinned version, "+cpu" wins the
#        version comparison): a much smaller image, what docker-compose.cloud.yml builds.
#   cuda the CUDA build: PyPI's Linux x86_64 wheel of the pinned version, whose CUDA runtime libraries
#        arrive as nvidia-* wheels, so the image needs no CUDA base or toolkit. The host needs the NVIDIA
#        driver and the NVIDIA Container Toolkit; docker-compose.gpu.yml builds this one and reserves a
#        GPU: docker build --build-arg TORCH_VARIANT=cuda -f docker/trainer.Dockerfile .
# Where torch sees no GPU, either image trains on the CPU (TRAINER_DEVICE=auto).
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    OMP_WAIT_POLICY=PASSIVE

RUN useradd --system --uid 10001 --home-dir /app intellioptics \
    && mkdir -p /app /data/trainer /data/cloud \
    && chown -R intellioptics /data
WORKDIR /app

# The dependency layer, before the code, so that a code change reuses it: pyproject.toml's training group
# at the exact versions of requirements/trainer.lock (PIP_CONSTRAINT), with the project's metadata (the
# `intellioptics` command; its version goes into the bundles' lineage) but none of its code, which runs
# from /app (PYTHONPATH). The lock comes from the CPU build; the CUDA build's own packages (nvidia-*),
# which the lock does not name, are those that torch's wheel pins.
COPY pyproject.toml ./
COPY requirements/trainer.lock ./requirements/
# pyproject.toml names README.md, which the metadata alone does not need: a stand-in, so that a
# documentation change does not rebuild the layer either.
RUN echo "IntelliOptics (the README is in the repository)" > README.md
RUN case "$TORCH_VARIANT" in \
        cpu) index="https://download.pytorch.org/whl/cpu" ;; \
        cuda) index="" ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac \
    && PIP_CONSTRAINT=requirements/trainer.lock pip install ${index:+--extra-index-url "$index"} ".[training]" \
    && rm -rf /app/build
COPY common ./common
COPY training ./training

# The intellioptics user by its uid, so that a runtime sees it is not root without the image's passwd.
USER 10001
# /data/trainer: scratch space per job (exports, bundles), emptied after each job.
# /data/cloud: the cloud's data volume, mounted read-only, for the trainer token the cloud's first start
# writes there (TRAINER_API_TOKEN_FILE). A trainer on another machine gets TRAINER_API_TOKEN instead.
VOLUME ["/data/trainer", "/data/cloud"]
CMD ["python", "-m", "training.service"]
