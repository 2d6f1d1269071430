"""launcher/compose.py's YAML emitter and its service rules, on their own.

The emitter writes YAML by hand (comments, anchors, flow lists), so it is checked on the strings YAML
reads as something else, and its read-back check is shown to catch a mistake. Then the rules that turn
a `Service` into a compose entry: key order, notes, read-only mounts, restarts, the jobs last.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from launcher import compose
from launcher.compose import Alias, Anchored, Commented, Flow, Note, Quoted, Spaced, to_yaml
from launcher.services import (
    CLOUD_COMPOSE_FILE,
    EDGE_COMPOSE_FILE,
    TRAINER_SERVICE,
    ComposeOptions,
    Service,
)

# Strings that YAML reads as something else, or cannot read, when written as they are.
AWKWARD = [
    "no",
    "yes",
    "on",
    "null",
    "~",
    "15",
    "1e3",
    "0x1F",
    "8000:8000",
    "a: b",
    "x #y",
    "- item",
    "[list]",
    "{map}",
    "*alias",
    "&anchor",
    "!tag",
    "@at",
    "%percent",
    '"quoted"',
    "'single'",
    "back\\slash",
    "tab\there",
    "new\nline",
    "trailing ",
    " leading",
    "",
    "ünïcödé €",
    "${VAR:-a b}",
    "${VAR:?a message: with a colon}",
    "daemon off;",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_any_string_reads_back_as_itself_plain_or_quoted(text):
    document = Spaced({"s": {"plain": text, "quoted": Quoted(text), "flow": Flow((text, "x"))}})

    loaded = yaml.safe_load(to_yaml("header", document))

    assert loaded["s"] == {"plain": text, "quoted": text, "flow": [text, "x"]}


def test_plain_strings_stay_plain_and_the_rest_is_quoted():
    text = to_yaml("h", Spaced({"a": {"image": "postgres:15", "restart": "no", "path": "./config:/config"}}))

    assert "  image: postgres:15\n" in text
    assert '  restart: "no"\n' in text
    assert "  path: ./config:/config\n" in text


def test_the_read_back_check_catches_an_emitter_mistake(monkeypatch):
    monkeypatch.setattr(compose, "_plain", lambda text: True)

    with pytest.raises(ValueError, match="does not read back"):
        to_yaml("h", Spaced({"restart": "no"}))


def test_comments_anchors_merges_and_notes():
    base = Anchored("base", {"interval": "10s", "retries": 3})
    document = Spaced(
        {
            "x-base": Commented(base, "shared"),
            "services": Spaced(
                {
                    "one": Commented({"check": {"<<": Alias(base), "retries": 5}}, "the first " * 20),
                    "two": {"ports": Note("none published"), "list": [Commented("a:/b", "why a"), "c:/d"]},
                }
            ),
        }
    )
    text = to_yaml("line one\n\n  indented", document)

    assert text.startswith(f"{compose.GENERATED}\n# line one\n#\n#   indented\n\n# shared\nx-base: &base\n")
    assert "    <<: *base\n" in text and "# none published\n    list:\n      # why a\n      - a:/b\n" in text
    assert all(len(line) <= compose.WIDTH for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "\nservices:\n  # the first" in text and "\n\n  two:\n" in text
    assert yaml.safe_load(text) == {
        "x-base": {"interval": "10s", "retries": 3},
        "services": {
            "one": {"check": {"interval": "10s", "retries": 5}},
            "two": {"list": ["a:/b", "c:/d"]},
        },
    }


@pytest.mark.parametrize("empty", [{}, []])
def test_an_empty_mapping_or_list_is_left_out_rather_than_written(empty):
    with pytest.raises(ValueError, match="leave the key out"):
        to_yaml("h", Spaced({"key": empty}))


# --- services ------------------------------------------------------------------------------------------

CHECK = Anchored("python-healthcheck", {"interval": "10s"})


def node(service: Service) -> dict[str, compose.Node]:
    return compose.service_node(service, CHECK)


def test_a_service_s_keys_come_in_one_order_with_its_notes_where_the_keys_are():
    service = Service(
        name="svc",
        argv=("python", "-m", "svc"),
        environment={"A_FILE": "/run/secrets/a", "B_FILE": "/run/secrets/b", "C_FILE": "/run/secrets/a"},
        port=9,
        published=False,
        health_path="/health",
        dockerfile="docker/svc.Dockerfile",
        compose=ComposeOptions(
            stop_grace_period="12s", init=True, notes={"ports": "not published", "volumes": "none"}
        ),
    )
    entry = node(service)

    assert list(entry) == [
        "build",
        "image",
        "command",
        "environment",
        "secrets",
        "ports",
        "volumes",
        "healthcheck",
        "logging",
        "stop_grace_period",
        "init",
        "restart",
    ]
    assert entry["ports"] == Note("not published") and entry["volumes"] == Note("none")
    assert entry["secrets"] == ["a", "b"]
    assert entry["image"] == "intellioptics/svc:latest" and entry["restart"] == "unless-stopped"


def test_unknown_notes_read_only_mounts_and_restarts_are_refused():
    service = Service(name="svc", argv=("x",), image="x", volumes={"/data": "vol"}, depends_on=("db",))

    with pytest.raises(ValueError, match="notes on keys"):
        node(replace(service, compose=ComposeOptions(notes={"stop_grace_periods": "typo"})))
    with pytest.raises(ValueError, match="read_only names no mount"):
        node(replace(service, compose=ComposeOptions(read_only={"/elsewhere": "why"})))
    with pytest.raises(ValueError, match="does not depend on"):
        node(replace(service, compose=ComposeOptions(restart_with={"other": "why"})))
    with pytest.raises(ValueError, match="unknown probe"):
        node(replace(service, health_path="/h", port=1, compose=ComposeOptions(probe="curl")))


def test_a_read_only_mount_and_a_restart_carry_their_reasons():
    volumes = node(TRAINER_SERVICE)["volumes"]
    assert isinstance(volumes, list)
    reason = TRAINER_SERVICE.compose.read_only["/data/cloud"]
    edge = yaml.safe_load(compose.render_all()[EDGE_COMPOSE_FILE])

    assert Commented("cloud-data:/data/cloud:ro", reason) in volumes
    assert edge["services"]["gateway"]["depends_on"]["edge-api"] == {
        "condition": "service_healthy",
        "restart": True,
    }


@pytest.mark.parametrize("file", [EDGE_COMPOSE_FILE, CLOUD_COMPOSE_FILE])
def test_jobs_come_last_and_every_secret_and_volume_used_is_declared(file):
    document = yaml.safe_load(compose.render_all()[file])
    services = document["services"]
    jobs = [name for name, spec in services.items() if spec["restart"] == "no"]

    assert list(services)[-len(jobs) :] == jobs
    used = {secret for spec in services.values() for secret in spec.get("secrets", [])}
    assert used == set(document.get("secrets", {}))
    mounted = {entry.split(":")[0] for spec in services.values() for entry in spec.get("volumes", [])}
    assert set(document["volumes"]) == {name for name in mounted if not name.startswith(".")}
