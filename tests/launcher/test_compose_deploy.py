"""The compose files as an operator deploys them on two hosts, checked without Docker.

Neither Docker Compose nor a compose-spec schema file is assumed: the files are validated against the
schema in `compose_schema.py` (a subset of the Compose Specification written for these tests, strict
about the keys it knows) and rendered by `compose_render.py` with the example settings in `deploy/`,
as `docker compose config` would render them. Then: model links are built from the public URL the
operator set, PostgreSQL is not published, cloud-api can be scaled out behind the cloud-gateway, every
secret is a mounted file (and the services read it from there), every service has rotated logs and a
stop grace longer than its own shutdown, plain `up` reserves no GPU, and the demo detectors are
registered by a one-shot job. Also the shared `*_FILE`
helper (common/secret_files.py), the database password's encoding and the first start's output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from cloud.app.bootstrap import Credentials, publish
from cloud.app.core.registry import download_url
from cloud.app.settings import CloudSettings, database_url_with_password, redact_password
from common.secret_files import (
    SecretFileError,
    SecretFileSettings,
    field_variable,
    read_secret_file,
    secret_file_values,
)
from edge.api.settings import EdgeSettings
from edge.streams.settings import StreamsSettings
from edge.updater.settings import UpdaterSettings
from launcher.services import CLOUD_SERVICES, EDGE_SERVICES, SECRETS
from tests.launcher.compose_render import (
    InterpolationError,
    interpolate,
    load,
    read_env_file,
    render,
    variables,
)
from tests.launcher.compose_schema import COMPOSE_FILE_SCHEMA

REPO = Path(__file__).resolve().parents[2]
CLOUD_FILE = REPO / "docker-compose.cloud.yml"
EDGE_FILE = REPO / "docker-compose.edge.yml"
GPU_FILE = REPO / "docker-compose.gpu.yml"
CLOUD_EXAMPLE = REPO / "deploy" / "cloud.env.example"
EDGE_EXAMPLE = REPO / "deploy" / "edge.env.example"
INIT_SECRETS = REPO / "deploy" / "init-secrets.sh"
FILES = {"cloud": [CLOUD_FILE], "edge": [EDGE_FILE], "cloud+gpu": [CLOUD_FILE, GPU_FILE]}
EXAMPLES = {"cloud": CLOUD_EXAMPLE, "edge": EDGE_EXAMPLE, "cloud+gpu": CLOUD_EXAMPLE}
# Variables compose itself reads from .env (not interpolated into the files).
COMPOSE_CLI_VARIABLES = {"COMPOSE_PROFILES", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}
# Settings whose value is a secret: never an environment value in compose, only their *_FILE.
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|CONNECTION_STRING)$")
EXAMPLE = read_env_file(CLOUD_EXAMPLE)
EDGE = read_env_file(EDGE_EXAMPLE)
CLOUD_URL = EXAMPLE["INTELLIOPTICS_CLOUD_URL"]


def rendered(side: str, **overrides: str) -> dict[str, Any]:
    return render(FILES[side], {**read_env_file(EXAMPLES[side]), **overrides})


def all_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = document["services"]
    return services


def seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([0-9.]+)(ms|us|ns|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# --- the files against the schema ----------------------------------------------------------------------

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="the schema checks need jsonschema_rs")
VALIDATOR = jsonschema_rs.Draft7Validator(COMPOSE_FILE_SCHEMA)


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.instance_path))}: {error.message}"
        for error in VALIDATOR.iter_errors(document)
    ]


@pytest.mark.parametrize("path", [CLOUD_FILE, EDGE_FILE, GPU_FILE], ids=lambda p: p.name)
def test_each_compose_file_as_written_is_valid(path):
    assert schema_errors(load(path)) == []


@pytest.mark.parametrize("side", list(FILES))
def test_each_compose_file_rendered_with_its_example_settings_is_valid(side):
    assert schema_errors(rendered(side)) == []


@pytest.mark.parametrize(
    "broken",
    [
        {"stop_grace_periods": "10s"},
        {"stop_grace_period": "ten seconds"},
        {"logging": {"driver": "json-file", "option": {"max-size": "1m"}}},
        {"secrets": [{"target": "/run/secrets/x"}]},
        {"depends_on": {"x": {"restart": True}}},
        {"deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia"}]}}}},
        {"ports": [{"target": 1, "host": "x"}]},
        {"restart": "sometimes"},
    ],
)
def test_the_schema_refuses_what_compose_would(broken):
    document = {"services": {"s": {"image": "x", **broken}}}

    assert schema_errors(document)


def test_the_schema_refuses_a_secret_without_a_source_and_unknown_top_level_keys():
    assert schema_errors({"services": {}, "secrets": {"s": {"name": "x"}}})
    assert schema_errors({"services": {}, "secret": {}})
    assert schema_errors({"services": {}, "x-anything": {"is": "fine"}}) == []


# --- the example settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", list(FILES))
def test_the_example_names_every_setting_its_compose_files_read(side):
    read = set().union(*(variables(path.read_text()) for path in FILES[side]))
    example = read_env_file(EXAMPLES[side])

    assert read - set(example) == set()
    assert set(example) - read - COMPOSE_CLI_VARIABLES == set()


def test_both_sides_name_the_same_cloud_and_no_example_holds_a_secret():
    assert EDGE["INTELLIOPTICS_CLOUD_URL"] == EXAMPLE["INTELLIOPTICS_CLOUD_URL"]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", EDGE["INTELLIOPTICS_EDGE_ID"])
    for name in (*EXAMPLE, *EDGE):
        assert not SECRET_NAME.search(name), name


@pytest.mark.parametrize(
    ("side", "missing"),
    [
        ("cloud", "INTELLIOPTICS_CLOUD_URL"),
        ("edge", "INTELLIOPTICS_CLOUD_URL"),
        ("edge", "INTELLIOPTICS_EDGE_ID"),
    ],
)
def test_compose_refuses_to_start_without_the_cloud_address_or_the_edge_id(side, missing):
    environ = {**read_env_file(EXAMPLES[side]), missing: ""}

    with pytest.raises(InterpolationError, match=f"required variable {missing} is missing a value"):
        render(FILES[side], environ)


def test_the_renderer_interpolates_like_compose():
    env = {"SET": "v", "EMPTY": ""}

    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET", env) == "v d  d v $SET"
    assert interpolate("${UNSET:-${SET}/x} ${SET:+alt} ${EMPTY:+alt}", env) == "v/x alt "
    with pytest.raises(InterpolationError, match="UNSET is missing a value: tell me"):
        interpolate("${UNSET:?tell me}", env)


# --- what the services are given -----------------------------------------------------------------------


def test_model_download_links_are_built_from_the_public_url_the_operator_set(monkeypatch):
    cloud, edge = rendered("cloud"), rendered("edge")

    for name in ("cloud-api", "cloud-worker"):
        assert all_services(cloud)[name]["environment"]["CLOUD_PUBLIC_URL"] == CLOUD_URL
    edge_env = {name: spec.get("environment", {}) for name, spec in all_services(edge).items()}
    assert edge_env["edge-api"]["EDGE_CLOUD_URL"] == CLOUD_URL
    assert edge_env["updater"]["UPDATER_CLOUD_URL"] == CLOUD_URL
    assert edge_env["gateway"]["CLOUD_URL"] == CLOUD_URL

    monkeypatch.setenv(
        "CLOUD_PUBLIC_URL", all_services(cloud)["cloud-api"]["environment"]["CLOUD_PUBLIC_URL"]
    )
    link = download_url(CloudSettings().public_url, "mdl_1")
    assert link == f"{CLOUD_URL}/api/v1/models/mdl_1/download"
    slashed = rendered("cloud", INTELLIOPTICS_CLOUD_URL=CLOUD_URL + "/")
    assert download_url(all_services(slashed)["cloud-api"]["environment"]["CLOUD_PUBLIC_URL"], "m") == (
        f"{CLOUD_URL}/api/v1/models/m/download"
    )


def test_postgres_is_reached_on_the_container_network_only():
    document = rendered("cloud")

    assert "ports" not in all_services(document)["postgres"]
    for name, spec in all_services(document).items():
        for port in spec.get("ports", []):
            assert "5432" not in str(port), name


# --- scaling the cloud out ------------------------------------------------------------------------------

# What `--scale NAME=N` may multiply: no fixed host port and no container_name (N containers would
# claim the same one). The stateless API and the two leasing processes.
SCALABLE = ("cloud-api", "cloud-worker", "trainer")


def published(spec: dict[str, Any]) -> list[str]:
    """A service's `ports:` in compose's short form, as strings."""
    return [str(port) for port in spec.get("ports", [])]


@pytest.mark.parametrize("document", ["as written", "rendered"])
def test_the_scalable_services_publish_no_port_and_have_no_fixed_name(document):
    services = all_services(load(CLOUD_FILE) if document == "as written" else rendered("cloud"))

    for name in SCALABLE:
        assert "ports" not in services[name], name
        assert "container_name" not in services[name], name
        assert "deploy" not in services[name] or "replicas" not in services[name]["deploy"], name


def test_the_cloud_gateway_is_the_cloud_s_public_door_on_8000_and_8443():
    services = all_services(rendered("cloud"))
    gateway = services["cloud-gateway"]
    env = gateway["environment"]

    assert published(gateway) == ["8000:8000", "8443:8443"]
    assert "container_name" not in gateway
    # Nothing else of the cloud takes 8000 or 8443 on the host.
    for name, spec in services.items():
        host_ports = {port.split(":")[-2] for port in published(spec)}
        assert name == "cloud-gateway" or not host_ports & {"8000", "8443"}, name
    # Every replica of the compose service, re-resolved (nginx's `resolve`), and its certificate kept.
    assert env["CLOUD_API_SERVERS"] == "server cloud-api:8000 resolve max_fails=1 fail_timeout=5s;"
    assert (env["CLOUD_GATEWAY_PORT"], env["CLOUD_GATEWAY_TLS_PORT"]) == ("8000", "8443")
    assert gateway["volumes"] == ["cloud-gateway-tls:/data/tls"]
    assert env["CLOUD_GATEWAY_TLS_CERT"].startswith("/data/tls/")
    assert env["CLOUD_GATEWAY_TLS_KEY"].startswith("/data/tls/")
    assert gateway["depends_on"] == {"cloud-api": {"condition": "service_healthy"}}
    assert gateway["healthcheck"]["test"][:2] == ["CMD", "wget"]
    # The address the example gives the edges is the port the gateway publishes.
    assert CLOUD_URL.rsplit(":", 1)[-1].split("/")[0] == "8000"


def test_the_services_inside_the_cloud_reach_cloud_api_by_its_service_name():
    services = all_services(rendered("cloud"))

    assert services["trainer"]["environment"]["TRAINER_CLOUD_URL"] == "http://cloud-api:8000"
    assert services["demo-detectors"]["environment"]["DEMO_CLOUD_URL"] == "http://cloud-api:8000"


def test_the_cloud_scaled_out_is_still_a_valid_compose_file():
    # `--scale` only sets how many containers a service gets; the file must stay valid with the
    # replicas that `deploy.replicas` would ask for, too.
    document = rendered("cloud")
    for name in SCALABLE:
        all_services(document)[name]["deploy"] = {"replicas": 3}

    assert schema_errors(document) == []
    assert schema_errors(rendered("cloud")) == []


def test_the_database_password_travels_apart_from_the_url():
    services = all_services(rendered("cloud"))
    password_file = services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"]

    for name, spec in services.items():
        env = spec.get("environment", {})
        if "DATABASE_URL" in env:
            assert make_url(env["DATABASE_URL"]).password is None, name
            assert env["CLOUD_DATABASE_PASSWORD_FILE"] == password_file, name


@pytest.mark.parametrize("side", ["cloud", "edge"])
def test_every_secret_is_a_file_mounted_into_the_services_that_read_it(side):
    document = rendered(side)
    declared = document.get("secrets", {})
    raw = {name: spec.get("environment", {}) for name, spec in all_services(load(FILES[side][0])).items()}
    used: set[str] = set()

    for name, spec in all_services(document).items():
        mounted = set(spec.get("secrets", []))
        assert mounted <= set(declared), name
        used |= mounted
        for variable, value in spec.get("environment", {}).items():
            value = str(value)
            if value.startswith(f"{SECRETS}/"):
                assert variable.endswith("_FILE"), (name, variable)
                assert value.removeprefix(f"{SECRETS}/") in mounted, (name, variable)
            if SECRET_NAME.search(variable):
                # Nothing secret through the environment, not even from the shell or .env.
                assert value == "", (name, variable)
                assert "$" not in str(raw[name][variable]), (name, variable)
    assert used == set(declared)
    secrets_dir = read_env_file(EXAMPLES[side])["INTELLIOPTICS_SECRETS_DIR"]
    for name, secret in declared.items():
        assert secret == {"file": f"{secrets_dir}/{name}"}


def test_the_edge_s_services_share_the_one_device_token_file():
    services = all_services(rendered("edge"))
    token_files = {
        services[name]["environment"][variable]
        for name, variable in (
            ("edge-api", "EDGE_API_TOKEN_FILE"),
            ("updater", "UPDATER_API_TOKEN_FILE"),
            ("streams", "STREAMS_API_TOKEN_FILE"),
        )
    }
    cloud_api = all_services(rendered("cloud"))["cloud-api"]["environment"]

    # The cloud creates the device token from the same file name the edges read.
    assert token_files == {cloud_api["CLOUD_BOOTSTRAP_API_TOKEN_FILE"]} == {f"{SECRETS}/api-token"}
    assert services["edge-api"]["environment"]["EDGE_EDGE_ID"] == EDGE["INTELLIOPTICS_EDGE_ID"]


@pytest.mark.parametrize("side", list(FILES))
def test_every_service_s_log_is_rotated(side):
    example = read_env_file(EXAMPLES[side])
    for name, spec in all_services(rendered(side, INTELLIOPTICS_LOG_MAX_SIZE="3m")).items():
        assert spec["logging"] == {
            "driver": "json-file",
            "options": {"max-size": "3m", "max-file": example["INTELLIOPTICS_LOG_MAX_FILE"]},
        }, name
    assert (example["INTELLIOPTICS_LOG_MAX_SIZE"], example["INTELLIOPTICS_LOG_MAX_FILE"]) == ("10m", "5")
    # Also without a .env: the defaults.
    bare = render(FILES[side], {"INTELLIOPTICS_CLOUD_URL": "http://c:8000", "INTELLIOPTICS_EDGE_ID": "e"})
    assert {str(s["logging"]["options"]["max-size"]) for s in all_services(bare).values()} == {"10m"}


# The longest each service may take to stop on its own after SIGTERM (SIGQUIT for nginx, SIGINT for
# postgres); its stop_grace_period must be longer, or Docker kills it in the middle.
UVICORN_GRACE_S = 10.0  # common.http.serve's default timeout_graceful_shutdown
OWN_SHUTDOWN_S = {
    "inference": UVICORN_GRACE_S,
    "edge-api": UVICORN_GRACE_S,
    "cloud-api": UVICORN_GRACE_S,
    # edge/updater/__main__.py serves with grace_s=5, then the runner waits for polls under way.
    "updater": 5.0 + UpdaterSettings().shutdown_grace_s,
    # edge/streams: grace_s=5, then each worker gets up to 1 s (supervisor.apply).
    "streams": 5.0 + 1.0,
    "gateway": 10.0,
    # nginx again (SIGQUIT): the requests under way, bounded by its proxy timeouts in practice.
    "cloud-gateway": 10.0,
    "postgres": 10.0,
    "azurite": 5.0,
    "cloud-worker": 10.0,
    # Stops at the next epoch boundary, then hands the lease back (one HTTP call).
    "trainer": 30.0,
    "demo-detectors": 10.0,
    "demo-models": 10.0,
}


@pytest.mark.parametrize("side", ["cloud", "edge"])
def test_every_service_is_given_longer_to_stop_than_its_own_shutdown_takes(side):
    services = all_services(rendered(side))

    assert set(services) <= set(OWN_SHUTDOWN_S)
    for name, spec in services.items():
        assert seconds(spec["stop_grace_period"]) > OWN_SHUTDOWN_S[name], name


def test_the_checks_above_cover_every_service_of_the_table():
    for side, table in (("cloud", CLOUD_SERVICES), ("edge", EDGE_SERVICES)):
        assert {s.name for s in table} == set(all_services(rendered(side)))


# --- GPU -----------------------------------------------------------------------------------------------


def test_plain_up_reserves_no_gpu_and_the_override_reserves_one():
    plain, gpu = all_services(rendered("cloud")), all_services(rendered("cloud+gpu"))

    assert all("deploy" not in spec for spec in plain.values())
    assert gpu["trainer"]["deploy"] == {
        "resources": {
            "reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
        }
    }
    assert gpu["trainer"]["build"] == {
        "context": ".",
        "dockerfile": "docker/trainer.Dockerfile",
        "args": {"TORCH_VARIANT": "cuda"},
    }
    assert gpu["trainer"]["image"] != plain["trainer"]["image"]
    assert {name: spec for name, spec in gpu.items() if name != "trainer"} == {
        name: spec for name, spec in plain.items() if name != "trainer"
    }


def _trainer_install_step(tmp_path: Path) -> str:
    dockerfile = (REPO / "docker" / "trainer.Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", dockerfile, flags=re.MULTILINE)
    (step,) = re.findall(r"^RUN (case .*?/app/build)$", dockerfile, flags=re.MULTILINE | re.DOTALL)
    return step.replace("/app/build", str(tmp_path / "build"))


@pytest.mark.parametrize(
    ("variant", "index"), [("cpu", "--extra-index-url https://download.pytorch.org/whl/cpu"), ("cuda", "")]
)
@pytest.mark.processes
def test_the_trainer_image_installs_the_cpu_torch_unless_asked_for_cuda(tmp_path, variant, index):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text('#!/bin/sh\necho "pip $*"\n')
    (bin_dir / "pip").chmod(0o755)
    result = subprocess.run(
        ["sh", "-c", _trainer_install_step(tmp_path)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TORCH_VARIANT": variant},
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.split() == ["pip", "install", *index.split(), ".[training]"]


@pytest.mark.processes
def test_the_trainer_image_refuses_an_unknown_torch_variant(tmp_path):
    result = subprocess.run(
        ["sh", "-c", _trainer_install_step(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "TORCH_VARIANT": "rocm"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0 and "TORCH_VARIANT must be cpu or cuda" in result.stderr


# --- demo detectors ------------------------------------------------------------------------------------


@pytest.mark.processes
def test_the_demo_detectors_are_registered_by_a_one_shot_job_after_the_api(tmp_path):
    job = all_services(rendered("cloud"))["demo-detectors"]

    assert "demo" in EXAMPLE["COMPOSE_PROFILES"].split(",")
    assert job["profiles"] == ["demo"] and job["restart"] == "no"
    assert job["depends_on"] == {"cloud-api": {"condition": "service_healthy"}}
    assert job["secrets"] == ["postgres-password"]
    dockerfile = (REPO / "docker" / "demo-detectors.Dockerfile").read_text()
    assert "COPY --chmod=755 docker/demo-detectors.sh /usr/local/bin/demo-detectors" in dockerfile
    for part in ("common", "cloud", "training"):
        assert f"COPY {part} ./{part}" in dockerfile

    # The script, with a stand-in python that records what it is asked to run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: str(v) for k, v in job["environment"].items()}
    subprocess.run(
        ["sh", str(REPO / "docker" / "demo-detectors.sh")],
        env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"},
        check=True,
    )
    assert log.read_text().splitlines() == [
        "-m training.demo_bundles --model-root /data/models",
        "-m cloud.app.seed_demo --model-root /data/models --cloud-url http://cloud-api:8000",
    ]


# --- the secret files, end to end ----------------------------------------------------------------------


def run_init_secrets(root: Path, side: str, **env: str) -> subprocess.CompletedProcess[str]:
    """deploy/init-secrets.sh from a copy of deploy/ under `root` (it works from its repository root)."""
    if not (root / "deploy").exists():
        shutil.copytree(REPO / "deploy", root / "deploy")
    return subprocess.run(
        ["sh", str(root / "deploy" / "init-secrets.sh"), side],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.processes
def test_init_secrets_creates_private_files_once_and_keeps_them(tmp_path):
    first = run_init_secrets(tmp_path, "cloud")
    assert first.returncode == 0, first.stderr
    secrets = tmp_path / "deploy" / "secrets"
    names = {"postgres-password", "api-token", "cloud-admin-password", "cloud-reviewer-password"}
    contents = {name: (secrets / name).read_text() for name in names}

    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for name in [*names, "azure-connection-string"]:
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o644, name
    assert (secrets / "azure-connection-string").read_text() == ""
    assert re.fullmatch(r"io_[0-9a-f]{48}", contents["api-token"])
    assert all(re.fullmatch(r"[0-9a-f]{48}", contents[n]) for n in names - {"api-token"})
    assert len(set(contents.values())) == len(names)

    again = run_init_secrets(tmp_path, "cloud")
    assert again.returncode == 0 and "created" not in again.stdout
    assert {name: (secrets / name).read_text() for name in names} == contents
    # git keeps none of them.
    assert (secrets / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]


@pytest.mark.processes
def test_init_secrets_on_an_edge_wants_the_cloud_s_token_and_follows_the_env_file(tmp_path):
    missing = run_init_secrets(tmp_path, "edge")
    assert missing.returncode == 1 and "copy the cloud host's deploy/secrets/api-token" in missing.stderr

    (tmp_path / ".env").write_text("INTELLIOPTICS_SECRETS_DIR='./elsewhere'\n")
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (tmp_path / "elsewhere" / "api-token").write_text("io_from_the_cloud\n")
    (tmp_path / "elsewhere" / "api-token").chmod(0o600)
    found = run_init_secrets(tmp_path, "edge")

    assert found.returncode == 0, found.stderr
    assert stat.S_IMODE((tmp_path / "elsewhere" / "api-token").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o700
    assert run_init_secrets(tmp_path, "neither").returncode == 2


def service_environment(document: dict[str, Any], name: str, project: Path) -> dict[str, str]:
    """A service's environment with /run/secrets/<x> replaced by the host file compose mounts there."""
    spec = all_services(document)[name]
    mounts = {
        f"{SECRETS}/{secret}": project / document["secrets"][secret]["file"]
        for secret in spec.get("secrets", [])
    }
    env = {}
    for variable, value in spec.get("environment", {}).items():
        value = str(value)
        if value.startswith(f"{SECRETS}/"):
            assert value in mounts, f"{name}: {variable}={value} is not mounted"
            value = str(mounts[value])
        env[variable] = value
    return env


@pytest.fixture
def clean_environment(monkeypatch):
    for variable in list(os.environ):
        if variable.startswith(("CLOUD_", "EDGE_", "STREAMS_", "UPDATER_", "INTELLIOPTICS_", "DATABASE_")):
            monkeypatch.delenv(variable)
    return monkeypatch


@pytest.mark.processes
def test_the_services_read_their_secrets_from_the_files_compose_mounts(tmp_path, clean_environment):
    monkeypatch = clean_environment
    secrets = tmp_path / "secrets"
    assert run_init_secrets(tmp_path, "cloud", INTELLIOPTICS_SECRETS_DIR=str(secrets)).returncode == 0
    (secrets / "postgres-password").write_text("p@ss/w0rd\n")
    cloud = rendered("cloud", INTELLIOPTICS_SECRETS_DIR=str(secrets))
    edge = rendered("edge", INTELLIOPTICS_SECRETS_DIR=str(secrets))
    token = (secrets / "api-token").read_text()

    def settings_of(document: dict[str, Any], name: str, cls: type[Any]) -> Any:
        with monkeypatch.context() as patch:
            for variable, value in service_environment(document, name, REPO).items():
                patch.setenv(variable, value)
            return cls()

    api = settings_of(cloud, "cloud-api", CloudSettings)
    url = make_url(api.async_database_url)
    assert (url.username, url.password, url.host, url.database) == (
        "intellioptics",
        "p@ss/w0rd",
        "postgres",
        "intellioptics",
    )
    assert api.bootstrap_admin_password == (secrets / "cloud-admin-password").read_text()
    assert api.bootstrap_reviewer_password == (secrets / "cloud-reviewer-password").read_text()
    assert api.bootstrap_api_token == token and api.azure_connection_string == ""
    assert api.public_url == CLOUD_URL
    worker = settings_of(cloud, "cloud-worker", CloudSettings)
    assert worker.async_database_url == api.async_database_url
    job = settings_of(cloud, "demo-detectors", CloudSettings)
    assert job.async_database_url == api.async_database_url

    edge_api = settings_of(edge, "edge-api", EdgeSettings)
    assert edge_api.api_token == token and edge_api.edge_id == EDGE["INTELLIOPTICS_EDGE_ID"]
    assert settings_of(edge, "streams", StreamsSettings).api_token == token
    assert settings_of(edge, "updater", UpdaterSettings).token() == token


def test_a_service_told_to_read_a_missing_secret_file_does_not_start(tmp_path, clean_environment):
    cloud = rendered("cloud", INTELLIOPTICS_SECRETS_DIR=str(tmp_path / "none"))
    for variable, value in service_environment(cloud, "cloud-api", REPO).items():
        clean_environment.setenv(variable, value)

    with pytest.raises(SecretFileError, match=r"CLOUD_\w+_FILE=.*none/[a-z-]+: no such file"):
        CloudSettings()


# --- the first start's output --------------------------------------------------------------------------

CREDS = Credentials(
    "admin", "admin-secret-pw", "reviewer", "reviewer-secret-pw", "io_secret_token", "io_trainer"
)


def test_the_cloud_image_logs_where_the_first_start_s_secrets_are_and_not_them(tmp_path, capsys):
    settings = CloudSettings(
        data_dir=tmp_path, api_token_file=str(tmp_path / "api-token"), bootstrap_print_secrets=False
    )
    publish(CREDS, settings)
    out = capsys.readouterr().out

    for secret in ("admin-secret-pw", "reviewer-secret-pw", "io_secret_token", "io_trainer"):
        assert secret not in out
    assert str(tmp_path / "credentials.json") in out and str(tmp_path / "api-token") in out
    stored = json.loads((tmp_path / "credentials.json").read_text())
    assert stored["admin_password"] == "admin-secret-pw"
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert (tmp_path / "api-token").read_text() == "io_secret_token\n"
    dockerfile = (REPO / "docker" / "cloud-api.Dockerfile").read_text()
    assert re.search(r"^\s+CLOUD_BOOTSTRAP_PRINT_SECRETS=false$", dockerfile, flags=re.MULTILINE)


def test_make_run_still_prints_the_first_start_s_accounts(tmp_path, capsys):
    publish(CREDS, CloudSettings(data_dir=tmp_path, api_token_file=""))
    out = capsys.readouterr().out

    assert "admin     admin / admin-secret-pw" in out and "API token io_secret_token" in out


# --- common/secret_files.py ----------------------------------------------------------------------------


class Demo(SecretFileSettings):
    model_config = {"env_prefix": "DEMO_", "extra": "ignore"}
    secret_fields = ("token",)

    token: str = ""
    other: str = ""


def test_a_secret_file_is_read_without_its_trailing_line_break(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("  spaces kept \t\n\n")
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(path))

    assert Demo().token == "  spaces kept \t"
    path.write_text("")
    assert Demo().token == ""
    assert read_secret_file(path) == ""


def test_without_a_file_variable_the_variable_is_used(monkeypatch):
    monkeypatch.setenv("DEMO_TOKEN", "from-env")
    monkeypatch.setenv("DEMO_TOKEN_FILE", "")

    assert Demo().token == "from-env"


def test_the_file_replaces_an_empty_variable_and_the_constructor_wins(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("from-file\n")
    monkeypatch.setenv("DEMO_TOKEN", "")
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(path))

    assert Demo().token == "from-file"
    assert Demo(token="given").token == "given"


def test_a_variable_and_its_file_both_set_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text("from-file")
    monkeypatch.setenv("DEMO_TOKEN", "from-env")
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(path))

    with pytest.raises(SecretFileError, match="DEMO_TOKEN and DEMO_TOKEN_FILE are both set"):
        Demo()


def test_a_missing_or_unreadable_file_is_an_error_naming_the_variable_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(
        SecretFileError, match=rf"^DEMO_TOKEN_FILE={re.escape(str(tmp_path))}/absent: no such file$"
    ):
        Demo()
    monkeypatch.setenv("DEMO_TOKEN_FILE", str(tmp_path))
    with pytest.raises(SecretFileError, match="is a directory"):
        Demo()
    with pytest.raises(SecretFileError, match="no such file"):
        secret_file_values({"x": "X"}, {"X_FILE": str(tmp_path / "absent")})


def test_only_listed_fields_read_files_and_a_clash_with_an_own_file_field_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_OTHER_FILE", str(tmp_path / "absent"))
    assert Demo().other == ""

    with pytest.raises(TypeError, match="not a field"):

        class Unknown(SecretFileSettings):
            secret_fields = ("nope",)

    with pytest.raises(TypeError, match="token_file field of its own"):

        class Clash(SecretFileSettings):
            secret_fields = ("token",)
            token: str = ""
            token_file: str = ""


def test_the_variable_of_a_field_follows_its_prefix_or_alias():
    assert field_variable(Demo, "token") == "DEMO_TOKEN"
    assert field_variable(CloudSettings, "database_password") == "CLOUD_DATABASE_PASSWORD"
    assert field_variable(CloudSettings, "database_url") == "CLOUD_DATABASE_URL"
    assert field_variable(EdgeSettings, "api_token") == "EDGE_API_TOKEN"


def test_an_empty_edge_id_is_the_default_one(monkeypatch):
    monkeypatch.setenv("EDGE_EDGE_ID", "")
    assert EdgeSettings().edge_id.startswith("edge-")
    monkeypatch.setenv("EDGE_EDGE_ID", "edge-line-1")
    assert EdgeSettings().edge_id == "edge-line-1"


# --- the database password in the URL ------------------------------------------------------------------


@pytest.mark.parametrize("password", ["p@ss/w0rd", "a:b@c/d?e#f%g h", "plain", "ünïcode€"])
def test_any_database_password_survives_the_url(password):
    url = database_url_with_password("postgresql://intellioptics@postgres:5432/intellioptics", password)
    settings = CloudSettings(
        database_url="postgresql://intellioptics@postgres:5432/intellioptics", database_password=password
    )
    parsed = make_url(settings.async_database_url)

    assert make_url(url).password == password
    assert (parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.port) == (
        "postgresql+asyncpg",
        "intellioptics",
        password,
        "postgres",
        5432,
    )
    assert password not in repr(settings)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "needs a DATABASE_URL"),
        ("sqlite:///x.db", "needs a DATABASE_URL"),
        ("postgresql://postgres/db", "needs a DATABASE_URL"),
        ("postgresql://u:inline@postgres/db", "has a password of its own"),
    ],
)
def test_a_password_without_a_url_to_go_into_is_refused(url, message):
    with pytest.raises(ValueError, match=message) as caught:
        database_url_with_password(url, "secret-pw")

    assert "secret-pw" not in str(caught.value) and "inline" not in str(caught.value)
    assert redact_password("postgresql://u:inline@h/db") == "postgresql://u:***@h/db"


def test_without_a_separate_password_the_url_is_used_as_given():
    settings = CloudSettings(database_url="postgresql://u:pw@h:5432/db")

    assert settings.async_database_url == "postgresql+asyncpg://u:pw@h:5432/db"


def test_migrations_take_a_url_with_an_encoded_password():
    from cloud.app.db.migrate import alembic_config

    url = CloudSettings(database_url="postgresql://u@h/db", database_password="p@ss/w0rd").async_database_url
    config = alembic_config(url)

    assert make_url(config.get_main_option("sqlalchemy.url") or "").password == "p@ss/w0rd"


# --- the README ----------------------------------------------------------------------------------------


def test_the_readme_states_the_minimum_compose_version_and_the_deployment_files():
    readme = (REPO / "README.md").read_text()
    docker = readme[readme.index("\n## Docker\n") : readme.index("\n## Development\n")]

    assert "Docker Compose plugin v2.17 or later" in docker
    for name in (
        "deploy/cloud.env.example",
        "deploy/edge.env.example",
        "deploy/init-secrets.sh",
        "docker-compose.gpu.yml",
        "demo-detectors",
        "TORCH_VARIANT",
        "stop_grace_period",
    ):
        assert name in docker, name
    for path in (CLOUD_FILE, EDGE_FILE):
        # Under the first line, which says the file is generated (launcher/compose.py).
        assert "Docker Compose v2.17 or later" in " ".join(path.read_text().splitlines()[1:3])
    assert yaml.safe_load(GPU_FILE.read_text())["services"].keys() == {"trainer"}
