"""The compose files are what launcher/compose.py writes from launcher/services.py, and run what it declares.

`python -m launcher.compose --check` must find nothing to change (regenerate with `make compose`). The
files as written are then compared with the services value by value (command, environment, published
ports, volumes, start order, health checks and profiles, plus each service's Dockerfile CMD or stock
image): the generator's own checks, and what the launcher runs locally.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import compose
from launcher.gateway import PLACEHOLDERS, TEMPLATE_PATH
from launcher.local import LocalLayout, local_services
from launcher.services import (
    ALL_SERVICES,
    CLOUD_API,
    CLOUD_SERVICES,
    COMPOSE_FILES,
    EDGE_SERVICES,
    GATEWAY,
    POSTGRES,
    SERVICES,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, dict[str, Any]] = {
    name: yaml.safe_load((REPO / name).read_text()) for name in COMPOSE_FILES
}
CASES = [(file, service) for file, services in COMPOSE_FILES.items() for service in services]
IDS = [service.name for _, service in CASES]


GENERATED = [*COMPOSE_FILES, compose.GPU_COMPOSE_FILE]


# --- generated -----------------------------------------------------------------------------------------


def test_the_files_on_disk_are_what_make_compose_writes():
    differences = compose.stale(REPO)

    assert differences == {}, "run `make compose`:\n" + "".join(differences.values())
    assert sorted(compose.render_all()) == sorted(GENERATED)


@pytest.mark.parametrize("name", GENERATED)
def test_each_file_says_first_that_it_is_generated_and_by_what(name):
    first = (REPO / name).read_text().splitlines()[0]

    assert first == compose.GENERATED
    assert "launcher/services.py" in first and "`python -m launcher.compose`" in first


def test_check_exits_1_and_says_what_differs(tmp_path, capsys):
    for name in GENERATED:
        shutil.copy(REPO / name, tmp_path / name)
    edge = tmp_path / "docker-compose.edge.yml"
    edge.write_text(edge.read_text().replace("stop_grace_period: 35s", "stop_grace_period: 5s"))
    (tmp_path / compose.GPU_COMPOSE_FILE).unlink()

    assert compose.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "docker-compose.edge.yml is not what launcher/services.py makes of it" in err
    assert "\n-    stop_grace_period: 5s\n+    stop_grace_period: 35s\n" in err
    assert f"{compose.GPU_COMPOSE_FILE} is missing" in err
    assert "docker-compose.cloud.yml" not in err

    assert compose.main(["--root", str(tmp_path)]) == 0
    assert compose.main(["--check", "--root", str(tmp_path)]) == 0
    assert edge.read_text() == (REPO / "docker-compose.edge.yml").read_text()


@pytest.mark.processes
def test_the_module_writes_the_same_bytes_in_another_process(tmp_path):
    # Another hash seed: no set or dict order of the interpreter's leaks into the files.
    result = subprocess.run(
        [sys.executable, "-m", "launcher.compose", "--root", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert {name: (tmp_path / name).read_text() for name in GENERATED} == compose.render_all()


# --- the files against the services --------------------------------------------------------------------


def compose_service(file: str, name: str) -> dict[str, Any]:
    service: dict[str, Any] = COMPOSE[file]["services"][name]
    return service


def compose_volumes(file: str, name: str) -> dict[str, str]:
    """target -> source (a named volume or a host path) of a compose service."""
    mounts: dict[str, str] = {}
    for entry in compose_service(file, name).get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


@pytest.mark.parametrize("file", list(COMPOSE_FILES))
def test_each_compose_file_declares_exactly_its_table(file):
    assert sorted(COMPOSE[file]["services"]) == sorted(s.name for s in COMPOSE_FILES[file])


def test_the_edge_and_the_cloud_are_separate_stacks():
    assert not {s.name for s in EDGE_SERVICES} & {s.name for s in CLOUD_SERVICES}
    assert {s.name for s in ALL_SERVICES} == {s.name for s in (*EDGE_SERVICES, *CLOUD_SERVICES) if s.local}


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_same_command(file, service):
    assert compose_service(file, service.name).get("command", []) == list(service.argv)


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_same_environment(file, service):
    assert compose_service(file, service.name).get("environment", {}) == dict(service.environment)


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_same_ports(file, service):
    assert compose_service(file, service.name).get("ports", []) == service.compose_ports


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_same_volumes(file, service):
    assert compose_volumes(file, service.name) == {**service.volumes, **service.binds}
    assert set(service.volumes.values()) <= set(COMPOSE[file]["volumes"])


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_same_start_order_on_healthy_services(file, service):
    depends_on = compose_service(file, service.name).get("depends_on", {})

    assert sorted(depends_on) == sorted(service.depends_on)
    assert all(rule["condition"] == "service_healthy" for rule in depends_on.values())
    # Compose files are separate projects unless combined: dependencies stay inside one file.
    assert set(service.depends_on) <= set(COMPOSE[file]["services"])


def test_the_launcher_starts_each_service_after_what_it_depends_on():
    started: list[str] = []
    for service in ALL_SERVICES:
        local_dependencies = {name for name in service.depends_on if name in {s.name for s in ALL_SERVICES}}
        assert local_dependencies <= set(started), service.name
        started.append(service.name)


def test_the_launcher_starts_the_cloud_before_the_edge():
    names = [service.name for service in SERVICES]

    assert names.index(CLOUD_API) < min(names.index(s.name) for s in EDGE_SERVICES if not s.one_shot)


def test_the_gateway_restarts_with_the_edge_api_it_resolved_at_start():
    assert compose_service("docker-compose.edge.yml", GATEWAY)["depends_on"]["edge-api"]["restart"] is True


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_compose_checks_the_health_path_the_launcher_waits_for(file, service):
    spec = compose_service(file, service.name)
    if service.one_shot:
        assert "healthcheck" not in spec
        return
    assert spec["restart"] == "unless-stopped"
    if service.health_path is not None:
        check = " ".join(spec["healthcheck"]["test"])
        assert f"http://127.0.0.1:{service.port}{service.health_path}" in check
    # Whatever others wait for must say when it is healthy.
    dependents = [s for s in COMPOSE_FILES[file] if service.name in s.depends_on]
    if dependents:
        assert spec["healthcheck"]["test"]


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_profiles_and_jobs_match(file, service):
    spec = compose_service(file, service.name)

    assert spec.get("profiles", []) == list(service.profiles)
    assert (spec.get("restart") == "no") == service.one_shot


@pytest.mark.parametrize(("file", "service"), CASES, ids=IDS)
def test_the_dockerfile_builds_and_runs_the_same_command(file, service):
    spec = compose_service(file, service.name)
    if service.image:
        assert not service.dockerfile and "build" not in spec
        assert spec["image"] == service.image
        return
    dockerfile = (REPO / service.dockerfile).read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)

    assert spec["build"] == {"context": ".", "dockerfile": service.dockerfile}
    assert spec["image"] == f"intellioptics/{service.name}:latest"
    assert json.loads(cmd) == list(service.argv)
    if service.port is not None:
        assert f"EXPOSE {service.port}" in dockerfile
    for target in service.volumes:
        assert target in dockerfile, f"{service.dockerfile} should declare VOLUME {target}"


def test_the_gateway_image_renders_the_launcher_template_from_the_same_variables():
    gateway = next(s for s in EDGE_SERVICES if s.name == GATEWAY)
    dockerfile = (REPO / gateway.dockerfile).read_text()

    assert "COPY nginx/gateway.conf.template /etc/nginx/templates/default.conf.template" in dockerfile
    assert TEMPLATE_PATH == REPO / "nginx" / "gateway.conf.template"
    assert set(gateway.environment) == set(PLACEHOLDERS) - {"NGINX_LOCAL_RESOLVERS"}
    assert "NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1" in dockerfile


@pytest.mark.parametrize("file", list(COMPOSE_FILES))
def test_urls_between_services_name_a_service_and_its_port(file):
    ports = {service.name: service.port for services in COMPOSE_FILES.values() for service in services}
    for service in COMPOSE_FILES[file]:
        for value in service.environment.values():
            for host, port in re.findall(r"(?:^|//|@)([a-z][a-z-]*):(\d+)", value):
                if host in ports:
                    assert int(port) == ports[host], f"{service.name}: {value}"


def test_the_cloud_database_in_compose_is_the_postgres_service():
    postgres = next(s for s in CLOUD_SERVICES if s.name == POSTGRES)
    env = postgres.environment
    users = [service for service in CLOUD_SERVICES if "DATABASE_URL" in service.environment]
    assert users
    for service in users:
        # The password travels apart from the URL, in the file postgres itself was started with.
        assert service.environment["DATABASE_URL"] == (
            f"postgresql://{env['POSTGRES_USER']}@{POSTGRES}:{postgres.port}/{env['POSTGRES_DB']}"
        )
        assert service.environment["CLOUD_DATABASE_PASSWORD_FILE"] == env["POSTGRES_PASSWORD_FILE"]


def test_locally_the_cloud_uses_the_embedded_database_unless_database_url_is_set(tmp_path):
    layout = LocalLayout(repo_root=tmp_path)
    local = local_services(layout, {}, ALL_SERVICES)
    chosen = local_services(layout, {"DATABASE_URL": "postgresql://db.example/x"}, ALL_SERVICES)

    cloud = [
        name for name in local if name in {s.name for s in CLOUD_SERVICES if "DATABASE_URL" in s.environment}
    ]
    assert cloud and POSTGRES not in local
    assert all(local[name].env["DATABASE_URL"] == "" for name in cloud)
    assert all(chosen[name].env["DATABASE_URL"] == "postgresql://db.example/x" for name in cloud)
