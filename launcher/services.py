"""The edge services, declared once.

`docker-compose.edge.yml` and the local launcher both run exactly these processes with these settings
(a test compares them), so "works locally" means "works in containers". Values are written the way
compose writes them: service hostnames (`http://inference:8001`), container paths (`/data/...`,
`/config/...`) and compose interpolation (`${NAME:-default}`); `launcher.local` maps them for a run
on one machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

GATEWAY = "gateway"
EDGE_API = "edge-api"
INFERENCE = "inference"
DEMO_MODELS = "demo-models"

# The cloud API's compose service (docker-compose.cloud.yml); reachable by this name when both files
# run as one project, otherwise set INTELLIOPTICS_CLOUD_URL.
CLOUD_API_HOST = "cloud-api"
CLOUD_API_PORT = 8000
CLOUD_URL_VARIABLE = "INTELLIOPTICS_CLOUD_URL"
CLOUD_URL = f"${{{CLOUD_URL_VARIABLE}:-http://{CLOUD_API_HOST}:{CLOUD_API_PORT}}}"

MODEL_ROOT = "/data/models"
EDGE_API_DATA = "/data/edge"
CONFIG_DIR = "/config"


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Service:
    """One process of the edge stack, as compose runs it.

    `port` is the container port the service listens on, `port_env` the variable that sets it, and
    `publish_host` the host interface compose publishes it on ("" for all interfaces: cameras reach
    the gateway from the network; internal services only from the box itself). A `one_shot` service
    is a job that runs to completion (compose profile `profiles`) instead of a server.
    """

    name: str
    argv: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    port: int | None = None
    port_env: str | None = None
    publish_host: str = "127.0.0.1"
    health_path: str | None = None
    volumes: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    binds: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    depends_on: tuple[str, ...] = ()
    dockerfile: str = ""
    one_shot: bool = False
    profiles: tuple[str, ...] = ()

    @property
    def compose_ports(self) -> list[str]:
        """The `ports:` entries compose needs for this service."""
        if self.port is None or self.one_shot:
            return []
        if self.publish_host:
            return [f"{self.publish_host}:{self.port}:{self.port}"]
        return [f"{self.port}:{self.port}"]


DEMO_MODELS_SERVICE = Service(
    name=DEMO_MODELS,
    argv=("python", "-m", "training.demo_bundles", "--model-root", MODEL_ROOT),
    volumes=_frozen({MODEL_ROOT: "edge-models"}),
    dockerfile="docker/demo-models.Dockerfile",
    one_shot=True,
    profiles=("demo",),
)

INFERENCE_SERVICE = Service(
    name=INFERENCE,
    argv=("python", "-m", "edge.inference"),
    environment=_frozen(
        {
            "INFERENCE_HOST": "0.0.0.0",
            "INFERENCE_PORT": "8001",
            "INFERENCE_MODEL_ROOT": MODEL_ROOT,
        }
    ),
    port=8001,
    port_env="INFERENCE_PORT",
    health_path="/health/live",
    volumes=_frozen({MODEL_ROOT: "edge-models"}),
    dockerfile="docker/inference.Dockerfile",
)

EDGE_API_SERVICE = Service(
    name=EDGE_API,
    argv=("python", "-m", "edge.api"),
    environment=_frozen(
        {
            "EDGE_HOST": "0.0.0.0",
            "EDGE_PORT": "8718",
            "EDGE_INFERENCE_URL": "http://inference:8001",
            "EDGE_CLOUD_URL": CLOUD_URL,
            # Sent as x-api-token with escalations; kept out of this file and the compose file.
            "EDGE_API_TOKEN": "${INTELLIOPTICS_API_TOKEN:-}",
            "EDGE_CONFIG_PATH": f"{CONFIG_DIR}/edge-config.yaml",
            "EDGE_DATA_DIR": EDGE_API_DATA,
        }
    ),
    port=8718,
    port_env="EDGE_PORT",
    health_path="/health/live",
    volumes=_frozen({EDGE_API_DATA: "edge-api-data"}),
    binds=_frozen({CONFIG_DIR: "./config"}),
    depends_on=(INFERENCE,),
    dockerfile="docker/edge-api.Dockerfile",
)

GATEWAY_SERVICE = Service(
    name=GATEWAY,
    # The official nginx image's command; its entrypoint renders /etc/nginx/templates first.
    argv=("nginx", "-g", "daemon off;"),
    environment=_frozen(
        {
            "GATEWAY_PORT": "30101",
            "EDGE_API_UPSTREAM": "edge-api:8718",
            "CLOUD_URL": CLOUD_URL,
        }
    ),
    port=30101,
    port_env="GATEWAY_PORT",
    publish_host="",
    health_path="/health/live",
    depends_on=(EDGE_API,),
    dockerfile="docker/gateway.Dockerfile",
)

# Start order: each service depends only on services before it.
SERVICES: tuple[Service, ...] = (INFERENCE_SERVICE, EDGE_API_SERVICE, GATEWAY_SERVICE)

# Everything compose declares for the edge, jobs included.
ALL_SERVICES: tuple[Service, ...] = (DEMO_MODELS_SERVICE, *SERVICES)
