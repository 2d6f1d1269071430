"""docker-compose.edge.yml runs exactly what launcher/services.py declares (and the launcher runs locally).

Compared value by value: command, environment, published ports, volumes, start order and health checks,
plus each service's Dockerfile CMD.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.gateway import PLACEHOLDERS, TEMPLATE_PATH
from launcher.services import ALL_SERVICES, GATEWAY, SERVICES, Service

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.edge.yml").read_text())
COMPOSE_SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NAMES = [service.name for service in ALL_SERVICES]


def by_name(name: str) -> Service:
    return next(service for service in ALL_SERVICES if service.name == name)


def compose_volumes(name: str) -> dict[str, str]:
    """target -> source (a named volume or a host path) of a compose service."""
    mounts: dict[str, str] = {}
    for entry in COMPOSE_SERVICES[name].get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts[target] = source
    return mounts


def test_compose_declares_exactly_the_launcher_services():
    assert sorted(COMPOSE_SERVICES) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_same_command(name):
    assert COMPOSE_SERVICES[name]["command"] == list(by_name(name).argv)


@pytest.mark.parametrize("name", NAMES)
def test_same_environment(name):
    assert COMPOSE_SERVICES[name].get("environment", {}) == dict(by_name(name).environment)


@pytest.mark.parametrize("name", NAMES)
def test_same_ports(name):
    assert COMPOSE_SERVICES[name].get("ports", []) == by_name(name).compose_ports


@pytest.mark.parametrize("name", NAMES)
def test_same_volumes(name):
    service = by_name(name)

    assert compose_volumes(name) == {**service.volumes, **service.binds}
    assert set(service.volumes.values()) <= set(COMPOSE["volumes"])


@pytest.mark.parametrize("name", NAMES)
def test_same_start_order_on_healthy_services(name):
    depends_on = COMPOSE_SERVICES[name].get("depends_on", {})

    assert sorted(depends_on) == sorted(by_name(name).depends_on)
    assert all(rule["condition"] == "service_healthy" for rule in depends_on.values())


def test_the_launcher_starts_each_service_after_what_it_depends_on():
    started: list[str] = []
    for service in SERVICES:
        assert set(service.depends_on) <= set(started), service.name
        started.append(service.name)


def test_the_gateway_restarts_with_the_edge_api_it_resolved_at_start():
    assert COMPOSE_SERVICES[GATEWAY]["depends_on"]["edge-api"]["restart"] is True


@pytest.mark.parametrize("name", [service.name for service in SERVICES])
def test_compose_checks_the_health_path_the_launcher_waits_for(name):
    service = by_name(name)
    check = " ".join(COMPOSE_SERVICES[name]["healthcheck"]["test"])

    assert f"http://127.0.0.1:{service.port}{service.health_path}" in check
    assert COMPOSE_SERVICES[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", NAMES)
def test_profiles_and_jobs_match(name):
    service = by_name(name)

    assert COMPOSE_SERVICES[name].get("profiles", []) == list(service.profiles)
    assert (COMPOSE_SERVICES[name].get("restart") == "no") == service.one_shot


@pytest.mark.parametrize("name", NAMES)
def test_the_dockerfile_builds_and_runs_the_same_command(name):
    service = by_name(name)
    build = COMPOSE_SERVICES[name]["build"]
    dockerfile = (REPO / service.dockerfile).read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, flags=re.MULTILINE)

    assert build == {"context": ".", "dockerfile": service.dockerfile}
    assert json.loads(cmd) == list(service.argv)
    if service.port is not None:
        assert f"EXPOSE {service.port}" in dockerfile


def test_the_gateway_image_renders_the_launcher_template_from_the_same_variables():
    dockerfile = (REPO / by_name(GATEWAY).dockerfile).read_text()

    assert "COPY nginx/gateway.conf.template /etc/nginx/templates/default.conf.template" in dockerfile
    assert TEMPLATE_PATH == REPO / "nginx" / "gateway.conf.template"
    assert set(by_name(GATEWAY).environment) == set(PLACEHOLDERS) - {"NGINX_LOCAL_RESOLVERS"}
    assert "NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1" in dockerfile


def test_urls_between_services_name_a_service_and_its_port():
    ports = {service.name: service.port for service in ALL_SERVICES}
    for service in ALL_SERVICES:
        for value in service.environment.values():
            for host, port in re.findall(r"(?:^|//)([a-z][a-z-]*):(\d+)", value):
                if host in ports:
                    assert int(port) == ports[host], f"{service.name}: {value}"


def test_the_cloud_compose_file_is_valid_and_healthchecked():
    cloud = yaml.safe_load((REPO / "docker-compose.cloud.yml").read_text())

    postgres = cloud["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["healthcheck"]["test"]
    assert {entry.split(":")[0] for entry in postgres["volumes"]} <= set(cloud["volumes"])
