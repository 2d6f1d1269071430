"""The compose view of the services, mapped onto one machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from launcher.__main__ import options_from_args, parser
from launcher.local import LocalLayout, interpolate, local_services
from launcher.services import (
    ALL_SERVICES,
    CLOUD_API,
    CLOUD_WORKER,
    DEMO_MODELS,
    EDGE_API,
    GATEWAY,
    INFERENCE,
    SERVICES,
    STREAMS,
    TRAINER,
    UPDATER,
    Service,
)

REPO = Path(__file__).resolve().parents[2]
LAYOUT = LocalLayout(repo_root=REPO)
DATA = REPO / ".intellioptics" / "data"
CLOUD_DATA = REPO / ".intellioptics" / "cloud"


def mapped(environ: dict[str, str] | None = None, layout: LocalLayout = LAYOUT):
    return local_services(layout, environ or {}, ALL_SERVICES)


def test_by_default_services_talk_over_loopback_on_their_compose_ports():
    services = mapped()

    internal_token_file = str(DATA / "secrets" / "internal-token")
    assert services[INFERENCE].env == {
        "INFERENCE_HOST": "127.0.0.1",
        "INFERENCE_PORT": "8001",
        "INFERENCE_MODEL_ROOT": str(DATA / "models"),
        "INTELLIOPTICS_INTERNAL_TOKEN_FILE": internal_token_file,
    }
    assert services[EDGE_API].env == {
        "EDGE_HOST": "127.0.0.1",
        "EDGE_PORT": "8718",
        "EDGE_INFERENCE_URL": "http://127.0.0.1:8001",
        "EDGE_CLOUD_URL": "http://127.0.0.1:8000",
        "EDGE_API_TOKEN": "",
        # Compose's secret file and fixed edge id; none locally (EdgeSettings: edge-<host name>).
        "EDGE_API_TOKEN_FILE": "",
        "EDGE_EDGE_ID": "",
        "EDGE_CONFIG_PATH": str(REPO / "config" / "edge-config.yaml"),
        "EDGE_DATA_DIR": str(DATA / "edge"),
        "EDGE_UPDATER_URL": "http://127.0.0.1:8721",
        "EDGE_STREAMS_URL": "http://127.0.0.1:8720",
        "EDGE_ADMIN_TOKEN": "",
        "INTELLIOPTICS_INTERNAL_TOKEN_FILE": internal_token_file,
    }
    assert services[GATEWAY].env == {
        "GATEWAY_PORT": "30101",
        "GATEWAY_TLS_PORT": "30143",
        "GATEWAY_TLS_CERT": str(DATA / "tls" / "gateway.crt"),
        "GATEWAY_TLS_KEY": str(DATA / "tls" / "gateway.key"),
        "EDGE_API_UPSTREAM": "127.0.0.1:8718",
        "CLOUD_URL": "http://127.0.0.1:8000",
    }
    assert [services[name].health_url for name in (CLOUD_API, INFERENCE, EDGE_API, GATEWAY)] == [
        "http://127.0.0.1:8000/health/ready",
        "http://127.0.0.1:8001/health/live",
        "http://127.0.0.1:8718/health/live",
        "http://127.0.0.1:30101/health/live",
    ]


def test_the_local_cloud_keeps_its_data_where_the_cloud_run_by_hand_does():
    services = mapped()
    cloud_common = {
        "DATABASE_URL": "",
        # Compose's secret files; none locally.
        "CLOUD_DATABASE_PASSWORD_FILE": "",
        "CLOUD_DATA_DIR": str(CLOUD_DATA),
        "CLOUD_PUBLIC_URL": "http://127.0.0.1:8000",
        "CLOUD_BLOB_BACKEND": "local",
        "CLOUD_AZURE_CONNECTION_STRING_FILE": "",
    }

    assert services[CLOUD_API].env == {
        "CLOUD_HOST": "127.0.0.1",
        "CLOUD_PORT": "8000",
        **cloud_common,
        "CLOUD_API_TOKEN_FILE": str(REPO / ".intellioptics" / "api-token"),
        "CLOUD_BOOTSTRAP_ADMIN_PASSWORD_FILE": "",
        "CLOUD_BOOTSTRAP_REVIEWER_PASSWORD_FILE": "",
        "CLOUD_BOOTSTRAP_API_TOKEN_FILE": "",
        # Reached directly, no gateway in front: forwarded headers only from loopback.
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    assert services[CLOUD_WORKER].env == cloud_common
    assert services[CLOUD_WORKER].port is None and services[CLOUD_WORKER].health_url is None
    assert services[CLOUD_API].directories == services[CLOUD_WORKER].directories == [CLOUD_DATA]
    assert services[CLOUD_API].argv == [sys.executable, "-m", "cloud.app"]
    assert services[CLOUD_WORKER].argv == [sys.executable, "-m", "cloud.worker"]


def test_the_edge_s_services_share_one_internal_token_file_and_the_gateway_keeps_its_certificate():
    services = mapped()
    edge_python = [INFERENCE, EDGE_API, UPDATER, STREAMS]

    files = {services[name].env["INTELLIOPTICS_INTERNAL_TOKEN_FILE"] for name in edge_python}
    assert files == {str(DATA / "secrets" / "internal-token")}
    assert all(DATA / "secrets" in services[name].directories for name in edge_python)
    assert DATA / "tls" in services[GATEWAY].directories


def test_the_cloud_port_moves_the_cloud_and_every_url_that_points_at_it():
    services = mapped({"CLOUD_PORT": "19004"})

    assert services[CLOUD_API].port == 19004
    assert services[CLOUD_API].health_url == "http://127.0.0.1:19004/health/ready"
    assert services[CLOUD_API].env["CLOUD_PUBLIC_URL"] == "http://127.0.0.1:19004"
    assert services[EDGE_API].env["EDGE_CLOUD_URL"] == "http://127.0.0.1:19004"
    assert services[GATEWAY].env["CLOUD_URL"] == "http://127.0.0.1:19004"


def test_the_cloud_starts_first_and_the_camera_streams_after_the_gateway():
    assert list(mapped()) == [
        CLOUD_API,
        CLOUD_WORKER,
        TRAINER,
        DEMO_MODELS,
        INFERENCE,
        EDGE_API,
        UPDATER,
        GATEWAY,
        STREAMS,
    ]


def test_the_services_run_on_the_launcher_s_own_interpreter():
    services = mapped()

    assert services[INFERENCE].argv == [sys.executable, "-m", "edge.inference"]
    assert services[EDGE_API].argv == [sys.executable, "-m", "edge.api"]
    assert services[DEMO_MODELS].argv == [
        sys.executable,
        "-m",
        "training.demo_bundles",
        "--model-root",
        str(DATA / "models"),
    ]


def test_port_variables_move_a_service_and_everything_that_calls_it():
    services = mapped({"INFERENCE_PORT": "19001", "EDGE_PORT": "19002", "GATEWAY_PORT": "19003"})

    assert services[INFERENCE].port == 19001
    assert services[INFERENCE].env["INFERENCE_PORT"] == "19001"
    assert services[EDGE_API].env["EDGE_INFERENCE_URL"] == "http://127.0.0.1:19001"
    assert services[EDGE_API].health_url == "http://127.0.0.1:19002/health/live"
    assert services[GATEWAY].env["EDGE_API_UPSTREAM"] == "127.0.0.1:19002"
    assert services[GATEWAY].port == 19003


def test_the_cloud_variables_reach_the_edge_and_the_gateway_alike():
    services = mapped(
        {"INTELLIOPTICS_CLOUD_URL": "https://cloud.example.com", "INTELLIOPTICS_API_TOKEN": "t" * 24}
    )

    assert services[EDGE_API].env["EDGE_CLOUD_URL"] == "https://cloud.example.com"
    assert services[EDGE_API].env["EDGE_API_TOKEN"] == "t" * 24
    assert services[GATEWAY].env["CLOUD_URL"] == "https://cloud.example.com"


def test_a_service_variable_set_in_the_environment_replaces_the_table_value():
    services = mapped({"EDGE_CLOUD_URL": "http://10.0.0.5:9000", "INFERENCE_MODEL_ROOT": "/models"})

    assert services[EDGE_API].env["EDGE_CLOUD_URL"] == "http://10.0.0.5:9000"
    assert services[GATEWAY].env["CLOUD_URL"] == "http://127.0.0.1:8000"
    assert services[INFERENCE].env["INFERENCE_MODEL_ROOT"] == "/models"


def test_data_and_config_directories_can_move(tmp_path):
    layout = LocalLayout(repo_root=REPO, data_dir=tmp_path / "d", config_dir=tmp_path / "c")
    services = mapped(layout=layout)

    assert services[INFERENCE].directories == [tmp_path / "d" / "models", tmp_path / "d" / "secrets"]
    assert services[EDGE_API].env["EDGE_DATA_DIR"] == str(tmp_path / "d" / "edge")
    assert services[EDGE_API].env["EDGE_CONFIG_PATH"] == str(tmp_path / "c" / "edge-config.yaml")


def test_only_whole_hostnames_and_container_paths_are_rewritten():
    service = Service(
        name="probe",
        argv=("python",),
        environment={
            "A": "/database/inference",
            "B": "my-inference:8001",
            "C": "http://inference.example.com:8001/x",
            "D": "http://inference:9999/x",
            "E": "/data",
            "F": "/config/x.yaml",
            "G": "inference",
        },
    )

    env = local_services(LAYOUT, {}, [*SERVICES, service])["probe"].env

    assert env == {
        "A": "/database/inference",
        "B": "my-inference:8001",
        "C": "http://inference.example.com:8001/x",
        "D": "http://127.0.0.1:9999/x",
        "E": str(DATA),
        "F": str(REPO / "config" / "x.yaml"),
        "G": "inference",
    }


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${X:-d}", {}, "d"),
        ("${X:-d}", {"X": ""}, "d"),
        ("${X:-d}", {"X": "v"}, "v"),
        ("${X}", {}, ""),
        ("a-${X}-b", {"X": "v"}, "a-v-b"),
        ("$request_id", {"request_id": "v"}, "$request_id"),
    ],
)
def test_compose_interpolation(value, environ, expected):
    assert interpolate(value, environ) == expected


def run_args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["run", *argv])


def test_command_line_ports_and_cloud_url_become_the_variables_the_services_read():
    options = options_from_args(
        run_args(
            "--gateway-port",
            "1",
            "--edge-api-port",
            "2",
            "--inference-port",
            "3",
            "--cloud-port",
            "4",
            "--cloud-url",
            "http://c:1",
        ),
        {"PATH": "/bin", "EDGE_CLOUD_URL": "http://stale", "CLOUD_URL": "http://stale"},
    )

    assert options.environ == {
        "PATH": "/bin",
        "GATEWAY_PORT": "1",
        "EDGE_PORT": "2",
        "INFERENCE_PORT": "3",
        "CLOUD_PORT": "4",
        "INTELLIOPTICS_CLOUD_URL": "http://c:1",
    }
    assert options.demo_models
    assert not options.cloud  # a cloud named by URL is used, not started


def test_command_line_defaults_keep_the_environment_and_start_a_cloud():
    options = options_from_args(run_args("--no-demo-models"), {"GATEWAY_PORT": "5"})

    assert options.environ == {"GATEWAY_PORT": "5"}
    assert not options.demo_models
    assert options.cloud
    assert options.layout == LocalLayout()


@pytest.mark.parametrize(
    ("argv", "environ"),
    [(("--no-cloud",), {}), ((), {"INTELLIOPTICS_CLOUD_URL": "https://cloud.example.com"})],
)
def test_no_local_cloud_when_asked_or_when_the_environment_names_one(argv, environ):
    assert not options_from_args(run_args(*argv), environ).cloud
