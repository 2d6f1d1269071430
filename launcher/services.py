"""The services of both stacks, declared once.

`python -m launcher.compose` (`make compose`) writes `docker-compose.edge.yml` from `EDGE_SERVICES`,
`docker-compose.cloud.yml` from `CLOUD_SERVICES` and the GPU override of the trainer, and the local
launcher runs the ones marked `local` from both, so "works locally" means "works in containers".
Values are written the way compose writes them: service hostnames (`http://inference:8001`),
container paths (`/data/...`, `/config/...`) and compose interpolation (`${NAME:-default}`);
`launcher.local` maps them for a run on one machine. What only Docker needs (stop periods, health
check commands, the comments the files carry) is each service's `compose`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

GATEWAY = "gateway"
EDGE_API = "edge-api"
INFERENCE = "inference"
UPDATER = "updater"
STREAMS = "streams"
DEMO_MODELS = "demo-models"
CLOUD_API = "cloud-api"
CLOUD_GATEWAY = "cloud-gateway"
CLOUD_WORKER = "cloud-worker"
TRAINER = "trainer"
POSTGRES = "postgres"
AZURITE = "azurite"
DEMO_DETECTORS = "demo-detectors"

# The cloud API's compose service (the trainer and the demo job reach it by this name); edges reach
# the cloud at INTELLIOPTICS_CLOUD_URL (set for `make run`, it starts no cloud of its own).
CLOUD_API_HOST = CLOUD_API
CLOUD_API_PORT = 8000
# In compose the cloud-gateway publishes the same port on the host, in front of every cloud-api replica,
# so the address edges use is the same with one replica or many.
CLOUD_GATEWAY_PORT = CLOUD_API_PORT
CLOUD_GATEWAY_TLS_PORT = 8443
CLOUD_URL_VARIABLE = "INTELLIOPTICS_CLOUD_URL"
CLOUD_URL = f"${{{CLOUD_URL_VARIABLE}:-http://{CLOUD_API_HOST}:{CLOUD_API_PORT}}}"
# Compose has no default: the cloud's address on another host is known only to whoever deploys it
# (deploy/*.env.example), and model download links are built from it. A local run keeps CLOUD_URL.
CLOUD_URL_REQUIRED = (
    f"${{{CLOUD_URL_VARIABLE}:?the address edges and browsers reach the cloud at (deploy/*.env.example)}}"
)
API_TOKEN_VARIABLE = "INTELLIOPTICS_API_TOKEN"
# The edge's id at the cloud: fixed in compose (a container's host name changes with every update).
EDGE_ID_VARIABLE = "INTELLIOPTICS_EDGE_ID"

# Compose mounts secrets as files here (`secrets:`); the services read them through `*_FILE`
# variables (common.secret_files). A local run has none and passes what it needs directly.
SECRETS = "/run/secrets"
API_TOKEN_SECRET = f"{SECRETS}/api-token"
POSTGRES_PASSWORD_SECRET = f"{SECRETS}/postgres-password"
ADMIN_PASSWORD_SECRET = f"{SECRETS}/cloud-admin-password"
REVIEWER_PASSWORD_SECRET = f"{SECRETS}/cloud-reviewer-password"
AZURE_CONNECTION_STRING_SECRET = f"{SECRETS}/azure-connection-string"

MODEL_ROOT = "/data/models"
EDGE_API_DATA = "/data/edge"
# The internal token the edge's services share (common.internal_auth): whichever starts first creates
# it in this volume, which only they mount.
EDGE_SECRETS = "/data/secrets"
INTERNAL_TOKEN_FILE = f"{EDGE_SECRETS}/internal-token"
# The gateways' TLS certificate and key (self-signed at first start unless you put yours there): the
# edge's gateway and the cloud-gateway each keep theirs here, in a volume of their own.
GATEWAY_TLS = "/data/tls"
GATEWAY_TLS_PORT = 30143
CLOUD_DATA = "/data/cloud"
# Where the cloud's first start writes the device API token (locally: .intellioptics/api-token).
CLOUD_TOKEN_FILE = f"{CLOUD_DATA}/api-token"
# Where the cloud's first start writes the token of the `trainer` service account (its data dir).
TRAINER_TOKEN_FILE = f"{CLOUD_DATA}/trainer-token"
TRAINER_DATA = "/data/trainer"
CONFIG_DIR = "/config"


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class HealthCheck:
    """A compose `healthcheck:` written out in full, for a service that is not probed over HTTP."""

    test: tuple[str, ...]
    interval: str = "10s"
    timeout: str = "3s"
    retries: int = 3
    start_period: str = "10s"


@dataclass(frozen=True)
class ComposeOptions:
    """What only compose needs of a service; launcher.compose writes it, a local run ignores it.

    `stop_grace_period` must outlast the service's own shutdown (`stop_reason` says what that is, as the
    comment beside it). `init` runs tini as PID 1 (our Python images; nginx and postgres handle signals
    themselves). A service with a `health_path` is probed over HTTP with `probe`: the image's `python`
    or, in the nginx images that have none, busybox `wget`; `healthcheck` replaces that probe (postgres).
    `read_only` lists the volume targets mounted `:ro`, `restart_with` the dependencies the service is
    restarted along with, each with its reason; `about` is the comment above the service and `notes` the
    comments above its keys (one for a key the service lacks stands where the key would be).
    """

    stop_grace_period: str = ""
    stop_reason: str = ""
    init: bool = False
    probe: Literal["python", "wget"] = "python"
    healthcheck: HealthCheck | None = None
    read_only: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    restart_with: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    about: str = ""
    notes: Mapping[str, str] = field(default_factory=lambda: _frozen({}))


# What the stop periods outlast: common.http.serve's graceful shutdown, and nginx's on SIGQUIT.
_UVICORN_STOP = "uvicorn lets requests under way finish for up to 10 s."
_NGINX_STOP = "SIGQUIT (the image's stop signal): nginx finishes the requests under way."


@dataclass(frozen=True)
class Service:
    """One service as compose runs it.

    `port` is the container port the service listens on, `port_env` the variable that sets it, and
    `publish_host` the host interface compose publishes it on ("" for all interfaces: cameras reach
    the gateway and edges the cloud from the network; edge-api only from the box itself).
    `published=False` keeps a service on the container network only (the edge's internal services,
    the database, cloud-api behind the cloud-gateway); `extra_ports` are further container ports
    published like `port` (the gateways' HTTPS).
    A `one_shot` service is a job that runs to completion (compose profile `profiles`) instead of a
    server. A service with an `image` runs that stock image and no Dockerfile of ours; `local=False`
    keeps it out of the launcher (the database: a local run uses the embedded SQLite, or
    DATABASE_URL; the cloud-gateway: a local run has one cloud-api). `local_environment` holds the
    only values a local run sets differently from compose, with the reason beside each; `compose` what
    only the compose files need.
    """

    name: str
    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    port: int | None = None
    port_env: str | None = None
    publish_host: str = "127.0.0.1"
    published: bool = True
    extra_ports: tuple[int, ...] = ()
    health_path: str | None = None
    volumes: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    binds: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    depends_on: tuple[str, ...] = ()
    dockerfile: str = ""
    image: str = ""
    one_shot: bool = False
    profiles: tuple[str, ...] = ()
    local: bool = True
    local_environment: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    compose: ComposeOptions = field(default_factory=ComposeOptions)

    @property
    def compose_ports(self) -> list[str]:
        """The `ports:` entries compose needs for this service."""
        if self.port is None or self.one_shot or not self.published:
            return []
        ports = (self.port, *self.extra_ports)
        if self.publish_host:
            return [f"{self.publish_host}:{p}:{p}" for p in ports]
        return [f"{p}:{p}" for p in ports]


# --- edge (docker-compose.edge.yml) --------------------------------------------------------------------

DEMO_MODELS_SERVICE = Service(
    name=DEMO_MODELS,
    argv=("python", "-m", "training.demo_bundles", "--model-root", MODEL_ROOT),
    volumes=_frozen({MODEL_ROOT: "edge-models"}),
    dockerfile="docker/demo-models.Dockerfile",
    one_shot=True,
    profiles=("demo",),
    compose=ComposeOptions(stop_grace_period="30s"),
)

INFERENCE_SERVICE = Service(
    name=INFERENCE,
    argv=("python", "-m", "edge.inference"),
    environment=_frozen(
        {
            "INFERENCE_HOST": "0.0.0.0",
            "INFERENCE_PORT": "8001",
            "INFERENCE_MODEL_ROOT": MODEL_ROOT,
            "INTELLIOPTICS_INTERNAL_TOKEN_FILE": INTERNAL_TOKEN_FILE,
        }
    ),
    port=8001,
    port_env="INFERENCE_PORT",
    published=False,
    health_path="/health/live",
    volumes=_frozen({MODEL_ROOT: "edge-models", EDGE_SECRETS: "edge-secrets"}),
    dockerfile="docker/inference.Dockerfile",
    compose=ComposeOptions(stop_grace_period="20s", stop_reason=_UVICORN_STOP, init=True),
)

EDGE_API_SERVICE = Service(
    name=EDGE_API,
    argv=("python", "-m", "edge.api"),
    environment=_frozen(
        {
            "EDGE_HOST": "0.0.0.0",
            "EDGE_PORT": "8718",
            "EDGE_INFERENCE_URL": "http://inference:8001",
            "EDGE_CLOUD_URL": CLOUD_URL_REQUIRED,
            # Sent as x-api-token with escalations: compose reads the secret file (`make run` passes
            # the one its own cloud wrote on first start).
            "EDGE_API_TOKEN": "",
            "EDGE_API_TOKEN_FILE": API_TOKEN_SECRET,
            "EDGE_EDGE_ID": f"${{{EDGE_ID_VARIABLE}:?a fixed id for this edge (deploy/edge.env.example)}}",
            "EDGE_CONFIG_PATH": f"{CONFIG_DIR}/edge-config.yaml",
            "EDGE_DATA_DIR": EDGE_API_DATA,
            "EDGE_UPDATER_URL": "http://updater:8721",
            "EDGE_STREAMS_URL": "http://streams:8720",
            # The edge operator's token; when empty (compose), the one the first start wrote to
            # <EDGE_DATA_DIR>/admin-token.
            "EDGE_ADMIN_TOKEN": "",
            "INTELLIOPTICS_INTERNAL_TOKEN_FILE": INTERNAL_TOKEN_FILE,
        }
    ),
    local_environment=_frozen(
        {
            "EDGE_CLOUD_URL": CLOUD_URL,
            "EDGE_API_TOKEN": f"${{{API_TOKEN_VARIABLE}:-}}",
            "EDGE_API_TOKEN_FILE": "",
            # Empty: edge-<host name>.
            "EDGE_EDGE_ID": f"${{{EDGE_ID_VARIABLE}:-}}",
            "EDGE_ADMIN_TOKEN": "${INTELLIOPTICS_EDGE_ADMIN_TOKEN:-}",
        }
    ),
    port=8718,
    port_env="EDGE_PORT",
    health_path="/health/live",
    volumes=_frozen({EDGE_API_DATA: "edge-api-data", EDGE_SECRETS: "edge-secrets"}),
    binds=_frozen({CONFIG_DIR: "./config"}),
    depends_on=(INFERENCE,),
    dockerfile="docker/edge-api.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="20s",
        stop_reason=f"{_UVICORN_STOP.removesuffix('.')}; then the outbox sender stops.",
        init=True,
    ),
)

# It also reads the edge config and outbox depth from edge-api (`about` says what it does).
UPDATER_SERVICE = Service(
    name=UPDATER,
    argv=("python", "-m", "edge.updater"),
    environment=_frozen(
        {
            "UPDATER_HOST": "0.0.0.0",
            "UPDATER_PORT": "8721",
            "UPDATER_CLOUD_URL": CLOUD_URL_REQUIRED,
            "UPDATER_API_TOKEN": "",
            "UPDATER_API_TOKEN_FILE": API_TOKEN_SECRET,
            "UPDATER_MODEL_ROOT": MODEL_ROOT,
            "UPDATER_INFERENCE_URL": "http://inference:8001",
            "UPDATER_EDGE_API_URL": "http://edge-api:8718",
            "INTELLIOPTICS_INTERNAL_TOKEN_FILE": INTERNAL_TOKEN_FILE,
        }
    ),
    local_environment=_frozen(
        {
            "UPDATER_CLOUD_URL": CLOUD_URL,
            "UPDATER_API_TOKEN": f"${{{API_TOKEN_VARIABLE}:-}}",
            "UPDATER_API_TOKEN_FILE": "",
        }
    ),
    port=8721,
    port_env="UPDATER_PORT",
    published=False,
    health_path="/health/live",
    volumes=_frozen({MODEL_ROOT: "edge-models", EDGE_SECRETS: "edge-secrets"}),
    depends_on=(INFERENCE, EDGE_API),
    dockerfile="docker/updater.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="35s",
        stop_reason="uvicorn's 5 s, then a download, install or swap under way gets "
        "UPDATER_SHUTDOWN_GRACE_S (20 s).",
        init=True,
        about="Keeps each configured detector's model in step with the cloud's registry: installs into "
        "the edge-models volume inference reads and asks inference to swap; heartbeats to the cloud.",
    ),
)

GATEWAY_SERVICE = Service(
    name=GATEWAY,
    # The official nginx image's command; its entrypoint renders /etc/nginx/templates first.
    argv=("nginx", "-g", "daemon off;"),
    environment=_frozen(
        {
            "GATEWAY_PORT": "30101",
            "GATEWAY_TLS_PORT": str(GATEWAY_TLS_PORT),
            "GATEWAY_TLS_CERT": f"{GATEWAY_TLS}/gateway.crt",
            "GATEWAY_TLS_KEY": f"{GATEWAY_TLS}/gateway.key",
            "EDGE_API_UPSTREAM": "edge-api:8718",
            "CLOUD_URL": CLOUD_URL_REQUIRED,
        }
    ),
    local_environment=_frozen({"CLOUD_URL": CLOUD_URL}),
    port=30101,
    port_env="GATEWAY_PORT",
    publish_host="",
    extra_ports=(GATEWAY_TLS_PORT,),
    health_path="/health/live",
    volumes=_frozen({GATEWAY_TLS: "gateway-tls"}),
    depends_on=(EDGE_API,),
    dockerfile="docker/gateway.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="15s",
        stop_reason=_NGINX_STOP,
        probe="wget",
        restart_with=_frozen(
            {EDGE_API: "nginx resolves edge-api once, at start: follow it when compose recreates edge-api."}
        ),
    ),
)

# It posts through the gateway, the cameras' own path (cloud fallback included); status and metrics on
# port 8720 (`about` says what it does).
STREAMS_SERVICE = Service(
    name=STREAMS,
    argv=("python", "-m", "edge.streams"),
    environment=_frozen(
        {
            "STREAMS_HOST": "0.0.0.0",
            "STREAMS_PORT": "8720",
            "STREAMS_EDGE_API_URL": "http://edge-api:8718",
            "STREAMS_SUBMIT_URL": "http://gateway:30101",
            "STREAMS_API_TOKEN": "",
            "STREAMS_API_TOKEN_FILE": API_TOKEN_SECRET,
            "INTELLIOPTICS_INTERNAL_TOKEN_FILE": INTERNAL_TOKEN_FILE,
        }
    ),
    local_environment=_frozen(
        {"STREAMS_API_TOKEN": f"${{{API_TOKEN_VARIABLE}:-}}", "STREAMS_API_TOKEN_FILE": ""}
    ),
    port=8720,
    port_env="STREAMS_PORT",
    published=False,
    health_path="/health/live",
    volumes=_frozen({EDGE_SECRETS: "edge-secrets"}),
    depends_on=(EDGE_API, GATEWAY),
    dockerfile="docker/streams.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="15s",
        stop_reason="uvicorn's 5 s, then each camera reader gets up to 1 s to stop.",
        init=True,
        about="Reads the cameras named in the edge config and posts their frames through the gateway. "
        "For file or folder sources, add a read-only bind (e.g. ./media:/media:ro).",
    ),
)

# --- cloud (docker-compose.cloud.yml) ------------------------------------------------------------------

# The cloud's database and its user (one name for both).
DATABASE = "intellioptics"
POSTGRES_PORT = 5432

POSTGRES_SERVICE = Service(
    name=POSTGRES,
    argv=(),
    environment=_frozen(
        {
            "POSTGRES_USER": DATABASE,
            # Set before the first start (deploy/init-secrets.sh); the image reads the file itself.
            "POSTGRES_PASSWORD_FILE": POSTGRES_PASSWORD_SECRET,
            "POSTGRES_DB": DATABASE,
        }
    ),
    port=POSTGRES_PORT,
    published=False,
    volumes=_frozen({"/var/lib/postgresql/data": "postgres-data"}),
    image="postgres:15",
    local=False,
    compose=ComposeOptions(
        stop_grace_period="30s",
        stop_reason="A fast shutdown (SIGINT) ends with a checkpoint.",
        healthcheck=HealthCheck(
            test=("CMD-SHELL", f"pg_isready -U {DATABASE} -d {DATABASE}"),
            interval="5s",
            retries=10,
        ),
        notes=_frozen(
            {"ports": "No published port: only the cloud's services reach it, on the container network."}
        ),
    ),
)

# Azure Blob emulator for trying the azure blob backend (profile "azure"; CLOUD_BLOB_BACKEND=azure).
AZURITE_SERVICE = Service(
    name=AZURITE,
    argv=(
        "azurite-blob",
        "--blobHost",
        "0.0.0.0",
        "--blobPort",
        "10000",
        "--location",
        "/data/azurite",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ),
    port=10000,
    volumes=_frozen({"/data/azurite": "azurite-data"}),
    image="mcr.microsoft.com/azure-storage/azurite:3.35.0",
    profiles=("azure",),
    local=False,
    compose=ComposeOptions(stop_grace_period="10s"),
)

# What the API and the worker share: one database, one data volume (blobs), one public address.
_CLOUD_COMMON = {
    # Compose: the postgres service, its password from the secret file it starts with (put into the
    # URL, encoded, by cloud.app.settings). Locally: the embedded SQLite in CLOUD_DATA_DIR unless the
    # environment sets DATABASE_URL.
    "DATABASE_URL": f"postgresql://{DATABASE}@{POSTGRES}:{POSTGRES_PORT}/{DATABASE}",
    "CLOUD_DATABASE_PASSWORD_FILE": POSTGRES_PASSWORD_SECRET,
    "CLOUD_DATA_DIR": CLOUD_DATA,
    # The address edges and browsers use (model download URLs, links): the edges' cloud URL.
    "CLOUD_PUBLIC_URL": CLOUD_URL_REQUIRED,
    "CLOUD_BLOB_BACKEND": "${CLOUD_BLOB_BACKEND:-local}",
    "CLOUD_AZURE_CONNECTION_STRING_FILE": AZURE_CONNECTION_STRING_SECRET,
}
_CLOUD_LOCAL = {
    "DATABASE_URL": "",
    "CLOUD_DATABASE_PASSWORD_FILE": "",
    "CLOUD_PUBLIC_URL": CLOUD_URL,
    "CLOUD_AZURE_CONNECTION_STRING_FILE": "",
}

CLOUD_API_SERVICE = Service(
    name=CLOUD_API,
    # Migrates and seeds (cloud.app.prestart) before it serves.
    argv=("python", "-m", "cloud.app"),
    environment=_frozen(
        {
            "CLOUD_HOST": "0.0.0.0",
            "CLOUD_PORT": str(CLOUD_API_PORT),
            **_CLOUD_COMMON,
            "CLOUD_API_TOKEN_FILE": CLOUD_TOKEN_FILE,
            # The first start's accounts (an empty file: generated, kept in CLOUD_DATA_DIR).
            "CLOUD_BOOTSTRAP_ADMIN_PASSWORD_FILE": ADMIN_PASSWORD_SECRET,
            "CLOUD_BOOTSTRAP_REVIEWER_PASSWORD_FILE": REVIEWER_PASSWORD_SECRET,
            "CLOUD_BOOTSTRAP_API_TOKEN_FILE": API_TOKEN_SECRET,
            # Only the cloud-gateway reaches cloud-api (it publishes no port), so its X-Forwarded-For
            # and -Proto are believed: login throttling counts failures per real client address, and
            # session cookies are Secure behind HTTPS. A local run is reached directly on loopback.
            "FORWARDED_ALLOW_IPS": "*",
        }
    ),
    port=CLOUD_API_PORT,
    port_env="CLOUD_PORT",
    # No host port: replicas (`--scale cloud-api=N`) cannot share one. The cloud-gateway publishes
    # 8000 and spreads requests over them; the worker, the trainer and the demo job reach
    # `cloud-api:8000` on the network, which Docker's DNS answers with every replica. `make run`
    # runs one cloud-api on :8000 of its own.
    published=False,
    health_path="/health/ready",
    volumes=_frozen({CLOUD_DATA: "cloud-data"}),
    depends_on=(POSTGRES,),
    dockerfile="docker/cloud-api.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="20s",
        stop_reason=_UVICORN_STOP,
        init=True,
        notes=_frozen(
            {
                "ports": "No published port and no container_name, so that `--scale cloud-api=N` can run N "
                f"of them: the cloud-gateway publishes {CLOUD_GATEWAY_PORT} and spreads requests over "
                f"them, and the services below reach {CLOUD_API_HOST}:{CLOUD_API_PORT}, which Docker's "
                "DNS answers with every replica."
            }
        ),
    ),
    local_environment=_frozen(
        {
            **_CLOUD_LOCAL,
            "CLOUD_BOOTSTRAP_ADMIN_PASSWORD_FILE": "",
            "CLOUD_BOOTSTRAP_REVIEWER_PASSWORD_FILE": "",
            "CLOUD_BOOTSTRAP_API_TOKEN_FILE": "",
            # No gateway in front: a client's own X-Forwarded-For must not be believed.
            "FORWARDED_ALLOW_IPS": "127.0.0.1",
        }
    ),
)

# The cloud's public door in compose: nginx in front of every cloud-api replica, round robin, the next
# replica for a request whose replica failed (nginx/cloud-gateway.conf.template), on 8000 (HTTP) and
# 8443 (HTTPS, self-signed at first start unless yours is in its volume). `resolve` makes nginx ask
# Docker's DNS for the replicas every few seconds, so `--scale cloud-api=N` needs no restart of it.
# local=False: `make run` serves its one cloud-api on :8000 directly (launcher.cloud_gateway runs this
# config locally for its tests).
CLOUD_GATEWAY_SERVICE = Service(
    name=CLOUD_GATEWAY,
    # The official nginx image's command; its entrypoint renders /etc/nginx/templates first.
    argv=("nginx", "-g", "daemon off;"),
    environment=_frozen(
        {
            "CLOUD_GATEWAY_PORT": str(CLOUD_GATEWAY_PORT),
            "CLOUD_GATEWAY_TLS_PORT": str(CLOUD_GATEWAY_TLS_PORT),
            "CLOUD_GATEWAY_TLS_CERT": f"{GATEWAY_TLS}/cloud-gateway.crt",
            "CLOUD_GATEWAY_TLS_KEY": f"{GATEWAY_TLS}/cloud-gateway.key",
            # launcher.cloud_gateway.upstream_servers([...], resolve=True, fail_timeout="5s")
            "CLOUD_API_SERVERS": (
                f"server {CLOUD_API_HOST}:{CLOUD_API_PORT} resolve max_fails=1 fail_timeout=5s;"
            ),
        }
    ),
    port=CLOUD_GATEWAY_PORT,
    port_env="CLOUD_GATEWAY_PORT",
    publish_host="",
    extra_ports=(CLOUD_GATEWAY_TLS_PORT,),
    health_path="/health/live",
    volumes=_frozen({GATEWAY_TLS: "cloud-gateway-tls"}),
    depends_on=(CLOUD_API,),
    dockerfile="docker/cloud-gateway.Dockerfile",
    local=False,
    compose=ComposeOptions(
        stop_grace_period="15s",
        stop_reason=_NGINX_STOP,
        probe="wget",
        about=f"The cloud's public door: nginx on {CLOUD_GATEWAY_PORT} (HTTP) and {CLOUD_GATEWAY_TLS_PORT} "
        "(HTTPS) in front of every cloud-api replica (nginx/cloud-gateway.conf.template). It "
        "re-resolves cloud-api every few seconds, so replicas that `--scale` adds or removes need no "
        "restart of it.",
        notes=_frozen(
            {
                "volumes": "Its certificate and key: self-signed at first start, or put yours there "
                "(same file names).",
                "healthcheck": "Answered by a replica: healthy once the gateway reaches one.",
            }
        ),
    ),
)

CLOUD_WORKER_SERVICE = Service(
    name=CLOUD_WORKER,
    argv=("python", "-m", "cloud.worker"),
    environment=_frozen(_CLOUD_COMMON),
    volumes=_frozen({CLOUD_DATA: "cloud-data"}),
    depends_on=(CLOUD_API,),
    dockerfile="docker/cloud-worker.Dockerfile",
    local_environment=_frozen(_CLOUD_LOCAL),
    compose=ComposeOptions(
        stop_grace_period="30s",
        stop_reason="SIGTERM ends the loop after the step under way (an export may take a while).",
        init=True,
        notes=_frozen({"depends_on": "The API's prestart migrates the schema first."}),
    ),
)

# Leases training jobs from the API (GPU reserved in compose; CUDA when present, else the CPU).
TRAINER_SERVICE = Service(
    name=TRAINER,
    argv=("python", "-m", "training.service"),
    environment=_frozen(
        {
            "TRAINER_CLOUD_URL": f"http://{CLOUD_API_HOST}:{CLOUD_API_PORT}",
            # A trainer-role token: TRAINER_API_TOKEN when set (a local run), else the file the API's
            # first start wrote.
            "TRAINER_API_TOKEN": "",
            "TRAINER_API_TOKEN_FILE": TRAINER_TOKEN_FILE,
            "TRAINER_WORK_DIR": TRAINER_DATA,
            "TRAINER_DEVICE": "${TRAINER_DEVICE:-auto}",
        }
    ),
    local_environment=_frozen({"TRAINER_API_TOKEN": "${INTELLIOPTICS_TRAINER_TOKEN:-}"}),
    volumes=_frozen({TRAINER_DATA: "trainer-data", CLOUD_DATA: "cloud-data"}),
    depends_on=(CLOUD_API,),
    dockerfile="docker/trainer.Dockerfile",
    compose=ComposeOptions(
        stop_grace_period="60s",
        stop_reason="SIGTERM stops a job at its next epoch and hands its lease back to the cloud.",
        init=True,
        read_only=_frozen({CLOUD_DATA: "Only for the trainer token the API's first start writes there."}),
    ),
)

# Compose only (profile "demo"), so that edges pull the demo models; `make run` does the same itself
# (launcher.run).
DEMO_DETECTORS_SERVICE = Service(
    name=DEMO_DETECTORS,
    argv=("demo-detectors",),
    environment=_frozen(
        {
            "DATABASE_URL": _CLOUD_COMMON["DATABASE_URL"],
            "CLOUD_DATABASE_PASSWORD_FILE": POSTGRES_PASSWORD_SECRET,
            "DEMO_MODEL_ROOT": MODEL_ROOT,
            "DEMO_CLOUD_URL": f"http://{CLOUD_API_HOST}:{CLOUD_API_PORT}",
        }
    ),
    volumes=_frozen({MODEL_ROOT: "demo-models"}),
    depends_on=(CLOUD_API,),
    dockerfile="docker/demo-detectors.Dockerfile",
    one_shot=True,
    profiles=("demo",),
    local=False,
    compose=ComposeOptions(
        stop_grace_period="30s",
        about='Profile "demo": trains the demo bundles (once: they stay in the demo-models volume) and '
        "registers their detectors and production models in the cloud, as `make run` does "
        "(cloud/app/seed_demo.py).",
    ),
)

# Everything each compose file declares, jobs and optional services included.
EDGE_SERVICES: tuple[Service, ...] = (
    DEMO_MODELS_SERVICE,
    INFERENCE_SERVICE,
    EDGE_API_SERVICE,
    UPDATER_SERVICE,
    GATEWAY_SERVICE,
    STREAMS_SERVICE,
)
CLOUD_SERVICES: tuple[Service, ...] = (
    POSTGRES_SERVICE,
    AZURITE_SERVICE,
    CLOUD_API_SERVICE,
    CLOUD_GATEWAY_SERVICE,
    CLOUD_WORKER_SERVICE,
    TRAINER_SERVICE,
    DEMO_DETECTORS_SERVICE,
)
# The compose file of each stack (launcher.compose writes them, and the GPU override of the cloud's).
EDGE_COMPOSE_FILE = "docker-compose.edge.yml"
CLOUD_COMPOSE_FILE = "docker-compose.cloud.yml"
COMPOSE_FILES: Mapping[str, tuple[Service, ...]] = MappingProxyType(
    {EDGE_COMPOSE_FILE: EDGE_SERVICES, CLOUD_COMPOSE_FILE: CLOUD_SERVICES}
)

# What `make run` runs, in start order (each service after everything it depends on that runs
# locally): the cloud first, so the edge starts with its token and a cloud to escalate to.
ALL_SERVICES: tuple[Service, ...] = tuple(s for s in (*CLOUD_SERVICES, *EDGE_SERVICES) if s.local)
# The long-running ones among them.
SERVICES: tuple[Service, ...] = tuple(s for s in ALL_SERVICES if not s.one_shot)
CLOUD_NAMES: frozenset[str] = frozenset(s.name for s in CLOUD_SERVICES)
