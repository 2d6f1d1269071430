"""Write the compose files from launcher/services.py, so that compose and `make run` cannot drift apart.

`python -m launcher.compose` (`make compose`) writes docker-compose.edge.yml, docker-compose.cloud.yml
and the GPU override docker-compose.gpu.yml; `--check` writes nothing and exits 1, with a diff, when a
file on disk is not what it would write (a test runs it). Everything a service is comes from its
`Service` (command, environment, ports, volumes, dependencies, health path) and its `ComposeOptions`
(stop period, health check command, the comments the file carries); what is the same for every
service of a file (image names, restart policy, log rotation, secret files, the header) is here.

The YAML is written by a small emitter rather than `yaml.dump`, for what a reader of the files needs:
comments, the shared blocks as anchors, one flow list per command. Whatever it writes is read back with
PyYAML and compared with what it meant to write, so a quoting mistake fails here, not on a deployment
host.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from launcher.services import (
    CLOUD_API_PORT,
    CLOUD_COMPOSE_FILE,
    CLOUD_DATA,
    CLOUD_GATEWAY_PORT,
    CLOUD_GATEWAY_TLS_PORT,
    COMPOSE_FILES,
    EDGE_API_DATA,
    EDGE_COMPOSE_FILE,
    GATEWAY_SERVICE,
    GATEWAY_TLS_PORT,
    SECRETS,
    TRAINER_SERVICE,
    TRAINER_TOKEN_FILE,
    HealthCheck,
    Service,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
GPU_COMPOSE_FILE = "docker-compose.gpu.yml"
COMMAND = "python -m launcher.compose"
GENERATED = f"# Generated from launcher/services.py by `{COMMAND}` (make compose): do not edit."
# Comments are wrapped to this many columns (ruff's line length less a little).
WIDTH = 104

# --- a YAML emitter for the part of YAML compose files use ----------------------------------------------


@dataclass(frozen=True)
class Quoted:
    """A string written in double quotes even where a plain one would do (values, ports)."""

    text: str


@dataclass(frozen=True)
class Flow:
    """A list of strings on one line, each quoted: `["python", "-m", "edge.api"]`."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Anchored:
    """A mapping defined once (`&name`), for `Alias` to refer to."""

    anchor: str
    value: Mapping[str, Node]


@dataclass(frozen=True)
class Alias:
    """`*name`: the anchored mapping again (under the key `<<`: merged into the mapping it is in)."""

    target: Anchored


@dataclass(frozen=True)
class Commented:
    """A value with a comment written above its key (or its `-` in a list)."""

    value: Node
    comment: str


@dataclass(frozen=True)
class Note:
    """Only a comment, where a key would be: the mapping read back has no such key."""

    comment: str


@dataclass(frozen=True)
class Spaced:
    """A mapping with a blank line between its entries (the file, its services)."""

    entries: Mapping[str, Node]


Node: TypeAlias = (
    "str | int | bool | Quoted | Flow | Anchored | Alias | Commented | Note | Spaced"
    " | Mapping[str, Node] | Sequence[Node] | None"
)
_PLAIN = re.compile(r"[A-Za-z0-9_./$][A-Za-z0-9_./:${}@+=-]*")


def _quote(text: str) -> str:
    # JSON's double-quoted strings are YAML's (its escapes are a subset of YAML's).
    return json.dumps(text, ensure_ascii=False)


def _plain(text: str) -> bool:
    """Whether `text` reads back as itself unquoted (not `no`, `15`, `null`, `a: b`, ...)."""
    return bool(_PLAIN.fullmatch(text)) and yaml.safe_load(text) == text


def _scalar(value: Node) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Quoted):
        return _quote(value.text)
    if isinstance(value, str):
        return value if _plain(value) else _quote(value)
    if isinstance(value, Flow):
        return "[" + ", ".join(_quote(item) for item in value.items) + "]"
    if isinstance(value, Alias):
        return f"*{value.target.anchor}"
    raise TypeError(f"not a scalar: {value!r}")


def _key(key: str) -> str:
    if key != "<<" and not _plain(key):
        raise ValueError(f"not a plain key: {key!r}")
    return key


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}# {line}" for line in textwrap.wrap(text, WIDTH - indent - 2, break_on_hyphens=False)]


def _mapping(entries: Mapping[str, Node], indent: int, out: list[str], *, spaced: bool = False) -> None:
    for number, (key, value) in enumerate(entries.items()):
        if spaced and number:
            out.append("")
        if isinstance(value, Note):
            out.extend(_comment(value.comment, indent))
            continue
        if isinstance(value, Commented):
            out.extend(_comment(value.comment, indent))
            value = value.value
        _entry(f"{' ' * indent}{_key(key)}:", value, indent, out)


def _entry(head: str, value: Node, indent: int, out: list[str]) -> None:
    if isinstance(value, Anchored):
        out.append(f"{head} &{value.anchor}")
        _mapping(value.value, indent + 2, out)
    elif isinstance(value, Spaced):
        out.append(head)
        _mapping(value.entries, indent + 2, out, spaced=True)
    elif isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{head} an empty mapping (leave the key out)")
        out.append(head)
        _mapping(value, indent + 2, out)
    elif value is None:
        out.append(head)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise ValueError(f"{head} an empty list (leave the key out)")
        out.append(head)
        _sequence(value, indent + 2, out)
    else:
        out.append(f"{head} {_scalar(value)}")


def _sequence(items: Sequence[Node], indent: int, out: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, Commented):
            out.extend(_comment(item.comment, indent))
            item = item.value
        if isinstance(item, Mapping):
            # `- first: x` then the other keys under `first`.
            nested: list[str] = []
            _mapping(item, indent + 2, nested)
            if not nested or nested[0].lstrip().startswith("#"):
                raise ValueError(f"a list item's first key cannot carry a comment: {item!r}")
            out.append(f"{pad}- {nested[0].lstrip()}")
            out.extend(nested[1:])
        else:
            out.append(f"{pad}- {_scalar(item)}")


def resolve(node: Node) -> Any:
    """What PyYAML reads back from the emitted node: anchors, merges and comments resolved."""
    if isinstance(node, Quoted):
        return node.text
    if isinstance(node, Flow):
        return list(node.items)
    if isinstance(node, Alias):
        return resolve(node.target)
    if isinstance(node, Anchored):
        return resolve(node.value)
    if isinstance(node, Commented):
        return resolve(node.value)
    if isinstance(node, Spaced):
        return resolve(node.entries)
    if isinstance(node, Mapping):
        merged: dict[str, Any] = dict(resolve(node["<<"])) if "<<" in node else {}
        for key, value in node.items():
            if key != "<<" and not isinstance(value, Note):
                merged[key] = resolve(value)
        return merged
    if isinstance(node, Sequence) and not isinstance(node, str):
        return [resolve(item) for item in node]
    return node


def to_yaml(header: str, document: Spaced) -> str:
    """The file: `header` as comment lines, then the document; refused unless it reads back as meant."""
    lines = [GENERATED]
    lines += [f"# {line}".rstrip() for line in header.strip("\n").splitlines()]
    lines.append("")
    _mapping(document.entries, 0, lines, spaced=True)
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != resolve(document):
        raise ValueError("the emitted YAML does not read back as the document it was written from")
    return text


# --- the compose files ---------------------------------------------------------------------------------

# The keys of a service in the order the files write them.
SERVICE_KEYS = (
    "build",
    "image",
    "command",
    "environment",
    "secrets",
    "ports",
    "volumes",
    "healthcheck",
    "depends_on",
    "profiles",
    "logging",
    "stop_grace_period",
    "init",
    "restart",
)
SECRETS_DIR = "${INTELLIOPTICS_SECRETS_DIR:-./deploy/secrets}"
# Every service's output (`docker logs`) is rotated.
LOGGING = Anchored(
    "logging",
    {
        "driver": "json-file",
        "options": {
            "max-size": Quoted("${INTELLIOPTICS_LOG_MAX_SIZE:-10m}"),
            "max-file": Quoted("${INTELLIOPTICS_LOG_MAX_FILE:-5}"),
        },
    },
)
# The GPU override's trainer: the CUDA build of torch, under its own tag, with one GPU.
GPU_TORCH_VARIANT = "cuda"
GPU_TAG = "cuda"


def image_name(service: Service, tag: str = "latest") -> str:
    """The stock image a service runs, or the name compose tags the image it builds with."""
    return service.image or f"intellioptics/{service.name}:{tag}"


def secret_names(service: Service) -> list[str]:
    """The secrets a service reads (its `*_FILE` values under /run/secrets), in the order it names them."""
    names = [
        value.removeprefix(f"{SECRETS}/")
        for value in service.environment.values()
        if value.startswith(f"{SECRETS}/")
    ]
    return list(dict.fromkeys(names))


def _timing(check: HealthCheck) -> dict[str, Node]:
    return {
        "interval": check.interval,
        "timeout": check.timeout,
        "retries": check.retries,
        "start_period": check.start_period,
    }


def _healthcheck(service: Service, python_check: Anchored) -> Mapping[str, Node] | None:
    options = service.compose
    if options.healthcheck is not None:
        return {"test": Flow(options.healthcheck.test), **_timing(options.healthcheck)}
    if service.health_path is None:
        return None
    url = f"http://127.0.0.1:{service.port}{service.health_path}"
    if options.probe == "python":
        probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=2)"
        return {"<<": Alias(python_check), "test": Flow(("CMD", "python", "-c", probe))}
    if options.probe == "wget":
        # nginx's images have busybox wget and no python; the default timings suit them.
        return {"test": Flow(("CMD", "wget", "-q", "-O", "/dev/null", url)), **_timing(HealthCheck(()))}
    raise ValueError(f"{service.name}: unknown probe {options.probe!r}")


def _volumes(service: Service) -> list[Node]:
    read_only = service.compose.read_only
    unknown = set(read_only) - set(service.volumes) - set(service.binds)
    if unknown:
        raise ValueError(f"{service.name}: read_only names no mount: {sorted(unknown)}")
    mounts: list[Node] = []
    for target, source in {**service.volumes, **service.binds}.items():
        entry = f"{source}:{target}:ro" if target in read_only else f"{source}:{target}"
        mounts.append(Commented(entry, read_only[target]) if read_only.get(target) else entry)
    return mounts


def _depends_on(service: Service) -> dict[str, Node]:
    restart_with = service.compose.restart_with
    if set(restart_with) - set(service.depends_on):
        raise ValueError(f"{service.name}: restart_with names a service it does not depend on")
    rules: dict[str, Node] = {}
    for name in service.depends_on:
        rule: dict[str, Node] = {"condition": "service_healthy"}
        if name in restart_with:
            rule["restart"] = Commented(True, restart_with[name])
        rules[name] = rule
    return rules


def _entries(service: Service, python_check: Anchored) -> dict[str, Node]:
    """The keys a service has, from its declaration and compose's rules for every service."""
    options = service.compose
    found: dict[str, Node] = {}
    if not service.image:
        found["build"] = {"context": ".", "dockerfile": service.dockerfile}
    found["image"] = image_name(service)
    if service.argv:
        found["command"] = Flow(service.argv)
    if service.environment:
        found["environment"] = {name: Quoted(value) for name, value in service.environment.items()}
    if secrets := secret_names(service):
        found["secrets"] = list(secrets)
    if ports := service.compose_ports:
        found["ports"] = [Quoted(port) for port in ports]
    if volumes := _volumes(service):
        found["volumes"] = volumes
    if (check := _healthcheck(service, python_check)) is not None:
        found["healthcheck"] = check
    if service.depends_on:
        found["depends_on"] = _depends_on(service)
    if service.profiles:
        found["profiles"] = Flow(service.profiles)
    found["logging"] = Alias(LOGGING)
    if grace := options.stop_grace_period:
        found["stop_grace_period"] = Commented(grace, options.stop_reason) if options.stop_reason else grace
    if options.init:
        found["init"] = True
    found["restart"] = "no" if service.one_shot else "unless-stopped"
    return found


def service_node(service: Service, python_check: Anchored) -> dict[str, Node]:
    """One entry of `services:`, its keys in SERVICE_KEYS order, with its notes where they belong."""
    notes = service.compose.notes
    unknown = set(notes) - set(SERVICE_KEYS)
    if unknown:
        raise ValueError(f"{service.name}: notes on keys a service has not: {sorted(unknown)}")
    found = _entries(service, python_check)
    node: dict[str, Node] = {}
    for key in SERVICE_KEYS:
        note = notes.get(key)
        if key in found:
            value = found[key]
            if note and isinstance(value, Commented):
                raise ValueError(f"{service.name}: {key} has two comments")
            node[key] = Commented(value, note) if note else value
        elif note:
            node[key] = Note(note)
    return node


@dataclass(frozen=True)
class ComposeFile:
    """One stack's file: its services (from COMPOSE_FILES) and what only the file as a whole has."""

    name: str
    header: str
    # How long a Python service may take to start before its failed checks count.
    python_start_period: str
    logging_comment: str

    @property
    def services(self) -> tuple[Service, ...]:
        return COMPOSE_FILES[self.name]

    def document(self) -> Spaced:
        python_check = Anchored(
            "python-healthcheck",
            _timing(HealthCheck((), start_period=self.python_start_period)),
        )
        # Table order, the one-shot jobs last.
        ordered = sorted(self.services, key=lambda service: service.one_shot)
        services: dict[str, Node] = {}
        for service in ordered:
            node = service_node(service, python_check)
            services[service.name] = Commented(node, service.compose.about) if service.compose.about else node
        secrets = list(dict.fromkeys(name for s in ordered for name in secret_names(s)))
        volumes = list(dict.fromkeys(source for s in ordered for source in s.volumes.values()))
        entries: dict[str, Node] = {
            "x-python-healthcheck": python_check,
            "x-logging": Commented(LOGGING, self.logging_comment),
            "services": Spaced(services),
        }
        if secrets:
            entries["secrets"] = {name: {"file": f"{SECRETS_DIR}/{name}"} for name in secrets}
        entries["volumes"] = dict.fromkeys(volumes)
        return Spaced(entries)

    def render(self) -> str:
        return to_yaml(self.header, self.document())


def gpu_document() -> Spaced:
    """The override of the cloud file: the trainer built for CUDA, with one GPU reserved."""
    trainer: dict[str, Node] = {
        "build": {"args": {"TORCH_VARIANT": GPU_TORCH_VARIANT}},
        "image": image_name(TRAINER_SERVICE, GPU_TAG),
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "count": 1, "capabilities": Flow(("gpu",))}]
                }
            }
        },
    }
    return Spaced({"services": {TRAINER_SERVICE.name: trainer}})


_RUN_NOTE = """\
launcher/services.py declares them, and `make compose` writes this file from it (a test fails when the
two differ; tests/launcher/test_compose_deploy.py checks the deployment side)."""

EDGE_HEADER = f"""\
IntelliOptics edge stack: one box next to the cameras. Docker Compose v2.17 or later (README "Docker").

Before the first start, on the edge box (README "Docker" walks through it):

  cp deploy/edge.env.example .env       # then edit it: INTELLIOPTICS_CLOUD_URL, INTELLIOPTICS_EDGE_ID
  deploy/init-secrets.sh edge           # deploy/secrets/api-token: copy the cloud host's file there
  docker compose -f {EDGE_COMPOSE_FILE} up -d --build
  cameras and the SDK: http://<box>:{GATEWAY_SERVICE.port}

Settings (.env, see deploy/edge.env.example):
  INTELLIOPTICS_CLOUD_URL    required: the cloud the edge escalates to, falls back to and pulls models
                             from (the cloud's own INTELLIOPTICS_CLOUD_URL)
  INTELLIOPTICS_EDGE_ID      required: this edge's fixed id at the cloud (heartbeats, escalations)
  INTELLIOPTICS_SECRETS_DIR, INTELLIOPTICS_LOG_MAX_SIZE / INTELLIOPTICS_LOG_MAX_FILE, COMPOSE_PROFILES

The device token for the cloud is a file (secret api-token, deploy/secrets/api-token), mounted under
{SECRETS} and read through *_FILE variables, never passed as an environment value. The edge
operator's token (edge config, status, metrics) is written by the first start to {EDGE_API_DATA}/admin-token
in the edge-api-data volume:
  docker compose -f {EDGE_COMPOSE_FILE} exec edge-api cat {EDGE_API_DATA}/admin-token

Cameras: http://<box>:{GATEWAY_SERVICE.port}, or https://<box>:{GATEWAY_TLS_PORT} with the gateway's certificate (self-signed at first
start in the gateway-tls volume unless you put gateway.crt and gateway.key there). Inference, the
updater and the streams service are reachable on the container network only, and only with the
internal token the services share through the edge-secrets volume.

Models arrive from the cloud through the updater (the cloud's demo-detectors job registers the demo
ones); for a first look without a cloud, fill the model volume with the demo bundles once:

  docker compose -f {EDGE_COMPOSE_FILE} --profile demo run --rm demo-models

`python -m launcher run` (make run) starts the same processes with the same settings without Docker;
{_RUN_NOTE}
"""

CLOUD_HEADER = f"""\
IntelliOptics cloud: the API and review UI behind the cloud-gateway (ports {CLOUD_GATEWAY_PORT} and {CLOUD_GATEWAY_TLS_PORT}), the
background worker, the trainer and their PostgreSQL database. Docker Compose v2.17 or later (README "Docker").

Before the first start, on the cloud host (README "Docker" walks through it):

  cp deploy/cloud.env.example .env      # then edit it: INTELLIOPTICS_CLOUD_URL at least
  deploy/init-secrets.sh cloud          # the secret files in deploy/secrets/ (kept if present)
  docker compose -f {CLOUD_COMPOSE_FILE} up -d --build

Add `-f {GPU_COMPOSE_FILE}` to train on an NVIDIA GPU (needs the NVIDIA Container Toolkit).

Secrets are files (deploy/secrets/, or INTELLIOPTICS_SECRETS_DIR), mounted under {SECRETS} and
read through *_FILE variables, never passed as environment values:
  postgres-password          the database password (postgres reads it at its first start; the cloud
                             puts it, URL-encoded, into DATABASE_URL)
  cloud-admin-password       the first start's admin and reviewer passwords and device API token;
  cloud-reviewer-password    an empty file: generated, kept in the cloud-data volume
  api-token                  ({CLOUD_DATA}/credentials.json), and only that path is logged. The same
                             api-token file goes to each edge (deploy/edge.env.example).
  azure-connection-string    the azure blob backend's connection string (empty with the local one)

Settings (.env, see deploy/cloud.env.example): INTELLIOPTICS_CLOUD_URL (required: the address edges
and browsers use; model download links are built from it), CLOUD_BLOB_BACKEND, TRAINER_DEVICE,
INTELLIOPTICS_SECRETS_DIR, INTELLIOPTICS_LOG_MAX_SIZE / INTELLIOPTICS_LOG_MAX_FILE, COMPOSE_PROFILES.

The trainer leases training jobs from cloud-api with the token of the `trainer` service account,
which the first start writes to {TRAINER_TOKEN_FILE}. It trains on the CPU here; more trainers
are more replicas (`--scale trainer=N`).

Scaling out: cloud-api keeps nothing between requests (the database and the blob store do), so more
replicas are more capacity:

  docker compose -f {CLOUD_COMPOSE_FILE} up -d --scale cloud-api=3

Only the cloud-gateway (nginx) publishes a port: it spreads requests over the replicas round robin,
gives a request whose replica failed to another one (any request the replica never received, and
idempotent ones after that), and finds the replicas --scale adds or removes by asking Docker's DNS
again every few seconds. Each replica migrates the database and seeds the first start's accounts
before it serves, under one PostgreSQL advisory lock, so replicas starting together do it once.
Blobs: the cloud-data volume is shared by every replica on this host; replicas on several hosts need
a shared blob store (CLOUD_BLOB_BACKEND=azure). The worker and the trainer lease their work, so more
of them are more leasing processes: --scale cloud-worker=N, --scale trainer=N.

HTTPS on {CLOUD_GATEWAY_TLS_PORT} uses the certificate and key in the cloud-gateway-tls volume (/data/tls/cloud-gateway.crt
and .key): put yours there, or the first start makes a self-signed one. Edges verify the cloud's
certificate against the system CAs, so an https:// INTELLIOPTICS_CLOUD_URL needs one from a CA.

Profile "demo" (COMPOSE_PROFILES=demo in .env, or --profile demo): the one-shot demo-detectors job
builds the demo bundles and registers their detectors in the cloud once cloud-api is healthy
(idempotent), so edges configured for them (config/edge-config.yaml) pull their models. Profile
"azure": Azurite, for CLOUD_BLOB_BACKEND=azure without an Azure account.

`python -m launcher run` (make run) starts cloud-api, cloud-worker and the trainer with the same
settings without Docker (one cloud-api on :{CLOUD_API_PORT}, no cloud-gateway), on the embedded SQLite database
unless DATABASE_URL is set;
{_RUN_NOTE}
"""

GPU_HEADER = f"""\
Train on an NVIDIA GPU: an override of {CLOUD_COMPOSE_FILE} for a host with the NVIDIA driver and
the NVIDIA Container Toolkit (without them `up` fails to start the trainer, so the base file has no
GPU reservation and trains on the CPU).

  docker compose -f {CLOUD_COMPOSE_FILE} -f {GPU_COMPOSE_FILE} up -d --build

Every compose command of that project then names both files (or set
COMPOSE_FILE={CLOUD_COMPOSE_FILE}:{GPU_COMPOSE_FILE} in .env). The trainer image is built
with the CUDA build of torch ({TRAINER_SERVICE.dockerfile}, TORCH_VARIANT={GPU_TORCH_VARIANT}) under its own tag, and
the container gets one GPU; TRAINER_DEVICE=auto (the default) then trains on it.
"""

FILES: tuple[ComposeFile, ...] = (
    ComposeFile(
        name=EDGE_COMPOSE_FILE,
        header=EDGE_HEADER,
        python_start_period="30s",
        logging_comment="Every service's output (`docker logs`) is rotated, so no container fills the box's disk.",
    ),
    ComposeFile(
        name=CLOUD_COMPOSE_FILE,
        header=CLOUD_HEADER,
        # The API migrates the database before it serves.
        python_start_period="60s",
        logging_comment="Every service's output (`docker logs`) is rotated, so no container fills the disk.",
    ),
)


def render_all() -> dict[str, str]:
    """Every compose file's name and text, as `make compose` writes them."""
    if {file.name for file in FILES} != set(COMPOSE_FILES):
        raise ValueError("FILES and launcher.services.COMPOSE_FILES name different files")
    texts = {file.name: file.render() for file in FILES}
    texts[GPU_COMPOSE_FILE] = to_yaml(GPU_HEADER, gpu_document())
    return texts


def stale(root: Path) -> dict[str, str]:
    """The files under `root` that differ from what would be written, each with a diff saying how."""
    found: dict[str, str] = {}
    for name, text in render_all().items():
        path = root / name
        if not path.is_file():
            found[name] = f"{name} is missing\n"
            continue
        current = path.read_text()
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{name} (on disk)",
                tofile=f"{name} (from launcher/services.py)",
            )
            found[name] = "".join(diff)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=f"Write {', '.join([*COMPOSE_FILES, GPU_COMPOSE_FILE])} from launcher/services.py.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 and show a diff if a file is out of date"
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="the directory the files are in (the repository root)"
    )
    args = parser.parse_args(argv)
    if args.check:
        differences = stale(args.root)
        for name, diff in differences.items():
            print(
                f"{name} is not what launcher/services.py makes of it; run `make compose`:", file=sys.stderr
            )
            sys.stderr.write(diff)
        if differences:
            return 1
        print(f"{len(render_all())} compose files up to date")
        return 0
    for name, text in render_all().items():
        path = args.root / name
        if path.is_file() and path.read_text() == text:
            print(f"{name}: unchanged")
        else:
            path.write_text(text)
            print(f"{name}: written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
