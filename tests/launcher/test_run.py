"""The launcher's run loop, with stand-in services (cloud and edge) in front of the real nginx gateway."""

from __future__ import annotations

import io
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from launcher.local import LocalLayout
from launcher.processes import ManagedProcess, free_port
from launcher.run import SEED_DEMO, LocalStack, RunOptions, run
from launcher.services import (
    CLOUD_API,
    CLOUD_TOKEN_FILE,
    CLOUD_URL,
    CLOUD_WORKER,
    DEMO_MODELS,
    EDGE_API,
    GATEWAY_SERVICE,
    INFERENCE,
    Service,
)

pytestmark = pytest.mark.processes

FAKE = str(Path(__file__).with_name("fake_service.py"))
TOKEN = "io_tokenfromthefakecloud_" + "t" * 20
SEEN_BY_THE_EDGE = "EDGE_API_TOKEN,EDGE_CLOUD_URL"


def line(name: str, text: str) -> str:
    """One line of a service's output as the launcher prints it (names padded to the longest)."""
    return f"{name:<{len(SEED_DEMO) + 1}}| {text}"


def fake_services(*, edge_env: dict[str, str] | None = None, demo: str = "bundle") -> list[Service]:
    demo_argv = ("python", FAKE, "bundle", "/data/models") if demo == "bundle" else ("python", FAKE, "fail")
    return [
        Service(
            name=CLOUD_API,
            argv=("python", FAKE, "cloud", "CLOUD_PORT"),
            environment={
                "CLOUD_PORT": "8000",
                "CLOUD_DATA_DIR": "/data/cloud",
                "CLOUD_API_TOKEN_FILE": CLOUD_TOKEN_FILE,
                "FAKE_TOKEN": TOKEN,
            },
            port=8000,
            port_env="CLOUD_PORT",
            health_path="/health/ready",
            volumes={"/data/cloud": "cloud-data"},
        ),
        Service(
            name=CLOUD_WORKER,
            argv=("python", FAKE, "idle"),
            volumes={"/data/cloud": "cloud-data"},
            depends_on=(CLOUD_API,),
        ),
        Service(name=DEMO_MODELS, argv=demo_argv, volumes={"/data/models": "edge-models"}, one_shot=True),
        Service(
            name=INFERENCE,
            argv=("python", FAKE, "serve", "INFERENCE_PORT"),
            environment={"INFERENCE_PORT": "8001", "INFERENCE_MODEL_ROOT": "/data/models"},
            port=8001,
            port_env="INFERENCE_PORT",
            health_path="/health/live",
            volumes={"/data/models": "edge-models"},
        ),
        Service(
            name=EDGE_API,
            argv=("python", FAKE, "serve", "EDGE_PORT"),
            environment={
                "EDGE_PORT": "8718",
                "EDGE_CLOUD_URL": CLOUD_URL,
                "EDGE_API_TOKEN": "${INTELLIOPTICS_API_TOKEN:-}",
                "FAKE_PRINT_ENV": SEEN_BY_THE_EDGE,
                **(edge_env or {}),
            },
            port=8718,
            port_env="EDGE_PORT",
            health_path="/health/live",
            depends_on=(INFERENCE,),
        ),
        GATEWAY_SERVICE,
    ]


def options(tmp_path: Path, **kwargs) -> RunOptions:
    environ = {
        "INFERENCE_PORT": str(free_port()),
        "EDGE_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "GATEWAY_TLS_PORT": str(free_port()),
        "CLOUD_PORT": str(free_port()),
        **kwargs.pop("environ", {}),
    }
    return RunOptions(
        layout=LocalLayout(repo_root=tmp_path),
        environ=environ,
        services=kwargs.pop("services", fake_services()),
        seed_argv=kwargs.pop("seed_argv", ("python", FAKE, "seed")),
        startup_timeout=kwargs.pop("startup_timeout", 20.0),
        **kwargs,
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_stack_starts_in_order_serves_through_the_gateway_and_stops_cleanly(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path)
    stack = LocalStack(opts, output)
    try:
        stack.start(threading.Event())
        pids = {name: process.pid for name, process in stack.processes().items()}
        response = httpx.get(f"http://127.0.0.1:{opts.environ['GATEWAY_PORT']}/health/live", trust_env=False)
        cert = tmp_path / ".intellioptics" / "data" / "tls" / "gateway.crt"
        over_tls = httpx.get(
            f"https://127.0.0.1:{opts.environ['GATEWAY_TLS_PORT']}/health/live",
            verify=ssl.create_default_context(cafile=str(cert)),
            trust_env=False,
        )
    finally:
        stack.stop()

    assert [name for name in pids] == [CLOUD_API, CLOUD_WORKER, INFERENCE, EDGE_API, "gateway"]
    assert response.status_code == 200
    assert over_tls.status_code == 200 and over_tls.json()["path"] == "/health/live"
    assert response.json()["path"] == "/health/live"
    assert all(pid is not None and gone(pid) for pid in pids.values())
    assert stack.running == []
    log = output.getvalue()
    bundle = tmp_path / ".intellioptics" / "data" / "models" / "det_fake" / "current"
    assert line(DEMO_MODELS, f"wrote {bundle}\n") in log
    assert line(INFERENCE, f"listening on {opts.environ['INFERENCE_PORT']}\n") in log
    assert log.index("starting inference") < log.index("starting edge-api") < log.index("starting gateway")
    assert (
        log.index("starting cloud-api") < log.index("starting cloud-worker") < log.index("starting inference")
    )


def test_the_edge_gets_the_token_the_cloud_wrote_on_its_first_start_and_escalates_to_it(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path)
    stack = LocalStack(opts, output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()

    token_file = tmp_path / ".intellioptics" / "api-token"
    assert token_file.read_text() == TOKEN + "\n"
    log = output.getvalue()
    assert line(EDGE_API, f"EDGE_API_TOKEN={TOKEN}\n") in log
    assert line(EDGE_API, f"EDGE_CLOUD_URL=http://127.0.0.1:{opts.environ['CLOUD_PORT']}\n") in log
    assert log.index("first start: token written") < log.index("starting edge-api")


def test_a_token_in_the_environment_wins_over_the_cloud_s_file(tmp_path):
    output = io.StringIO()
    stack = LocalStack(options(tmp_path, environ={"INTELLIOPTICS_API_TOKEN": "io_from_the_shell"}), output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()

    assert line(EDGE_API, "EDGE_API_TOKEN=io_from_the_shell\n") in output.getvalue()


def test_without_the_cloud_s_token_file_the_edge_starts_tokenless_and_the_run_says_why(tmp_path):
    output = io.StringIO()
    services = fake_services()
    services[0] = replace(services[0], environment={**services[0].environment, "FAKE_TOKEN": ""})
    stack = LocalStack(options(tmp_path, services=services), output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()

    log = output.getvalue()
    assert f"no API token in {tmp_path / '.intellioptics' / 'api-token'}" in log
    assert line(EDGE_API, "EDGE_API_TOKEN=\n") in log


def test_the_demo_detectors_are_registered_in_the_cloud_once_the_bundles_exist(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path)
    stack = LocalStack(opts, output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()

    log = output.getvalue()
    model_root = tmp_path / ".intellioptics" / "data" / "models"
    cloud_url = f"http://127.0.0.1:{opts.environ['CLOUD_PORT']}"
    assert line(SEED_DEMO, f"seed --model-root {model_root} --cloud-url {cloud_url}\n") in log
    assert (
        log.index(line(DEMO_MODELS, "wrote"))
        < log.index(line(SEED_DEMO, "seed"))
        < log.index("starting inference")
    )


def test_a_failing_registration_of_the_demo_detectors_stops_the_run(tmp_path):
    output = io.StringIO()

    status = run(options(tmp_path, seed_argv=("python", FAKE, "fail")), output)

    assert status == 1
    log = output.getvalue()
    assert "registering the demo detectors in the cloud failed with status 3" in log
    assert "starting inference" not in log
    assert "stopped cloud-worker" in log and "stopped cloud-api" in log


def test_without_a_local_cloud_only_the_edge_runs(tmp_path):
    output = io.StringIO()
    stack = LocalStack(options(tmp_path, cloud=False), output)
    try:
        stack.start(threading.Event())
        names = list(stack.processes())
    finally:
        stack.stop()

    assert names == [INFERENCE, EDGE_API, "gateway"]
    assert SEED_DEMO not in output.getvalue()
    assert line(EDGE_API, "EDGE_API_TOKEN=\n") in output.getvalue()


def test_demo_models_are_built_only_when_the_model_root_is_empty(tmp_path):
    (tmp_path / ".intellioptics" / "data" / "models" / "det_old" / "current").mkdir(parents=True)
    output = io.StringIO()
    stack = LocalStack(options(tmp_path, services=fake_services(demo="fail")), output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()

    assert DEMO_MODELS not in output.getvalue()


def test_a_failing_demo_build_stops_the_run_with_a_hint(tmp_path):
    output = io.StringIO()

    status = run(options(tmp_path, services=fake_services(demo="fail")), output)

    assert status == 1
    assert "cannot do that" in output.getvalue()
    assert "--no-demo-models" in output.getvalue()
    assert "starting inference" not in output.getvalue()
    assert SEED_DEMO not in output.getvalue()


def test_a_service_that_dies_stops_the_others_and_the_run_fails(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path, services=fake_services(edge_env={"FAKE_EXIT_AFTER": "1.5"}), demo_models=False)

    status = run(opts, output)

    assert status == 1
    log = output.getvalue()
    assert "edge-api exited with status 7; stopping the others" in log
    assert "stopped gateway" in log and "stopped inference" in log and "stopped cloud-api" in log
    assert not (tmp_path / ".intellioptics" / "data" / "models" / "det_fake").exists()


def test_a_service_that_never_gets_healthy_fails_the_start_and_leaves_nothing(tmp_path):
    output = io.StringIO()
    services = fake_services()
    services[4] = Service(
        name=EDGE_API,
        argv=("python", "-c", "import time; print('stuck', flush=True); time.sleep(60)"),
        port=8718,
        port_env="EDGE_PORT",
        health_path="/health/live",
    )
    opts = options(
        tmp_path, services=services, startup_timeout=5.0
    )  # room for the healthy fakes on a busy machine

    status = run(opts, output)

    assert status == 1
    log = output.getvalue()
    assert "cannot start" in log and "not healthy" in log and "stuck" in log, log
    assert "stopped edge-api" in log and "stopped inference" in log
    assert "starting gateway" not in log


def test_sigterm_stops_the_run_cleanly(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path)

    def terminate_when_up() -> None:
        # Only while run() owns SIGTERM: never signal the test process otherwise.
        for _ in range(400):
            if "IntelliOptics is up" in output.getvalue():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    # What SIGTERM did before (the default, or coverage's handler that saves its data): run() puts it back.
    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_when_up)
    killer.start()
    try:
        status = run(opts, output)
    finally:
        killer.join()

    assert status == 0
    assert signal.getsignal(signal.SIGTERM) == before
    log = output.getvalue()
    assert "IntelliOptics is up" in log and "review UI" in log
    assert (
        log.index("stopped gateway")
        < log.index("stopped edge-api")
        < log.index("stopped inference")
        < log.index("stopped cloud-worker")
        < log.index("stopped cloud-api")
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_children_die_with_a_killed_launcher(tmp_path):
    """Even SIGKILL of the launcher, which runs no cleanup, leaves no server behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from launcher.processes import ManagedProcess\n"
        "child = ManagedProcess('sleeper', ['sleep', '60']).start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = ManagedProcess(
        "parent", [sys.executable, str(script)], env={"PYTHONPATH": str(Path.cwd())}
    ).start()
    try:
        for _ in range(200):
            if parent.output_tail().strip():
                break
            time.sleep(0.05)
        child_pid = int(parent.output_tail().strip())
        assert not gone(child_pid)
        assert parent.pid is not None
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        for _ in range(100):
            if gone(child_pid):
                break
            time.sleep(0.05)
    finally:
        parent.stop()

    assert gone(child_pid)
