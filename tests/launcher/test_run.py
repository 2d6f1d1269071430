"""The launcher's run loop, with stand-in services in front of the real nginx gateway."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from launcher.local import LocalLayout
from launcher.processes import ManagedProcess, free_port
from launcher.run import EdgeStack, RunOptions, run
from launcher.services import DEMO_MODELS, EDGE_API, GATEWAY_SERVICE, INFERENCE, Service

FAKE = str(Path(__file__).with_name("fake_service.py"))


def fake_services(*, edge_env: dict[str, str] | None = None, demo: str = "bundle") -> list[Service]:
    demo_argv = ("python", FAKE, "bundle", "/data/models") if demo == "bundle" else ("python", FAKE, "fail")
    return [
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
            environment={"EDGE_PORT": "8718", **(edge_env or {})},
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
        "INTELLIOPTICS_CLOUD_URL": f"http://127.0.0.1:{free_port()}",
    }
    return RunOptions(
        layout=LocalLayout(repo_root=tmp_path),
        environ=environ,
        services=kwargs.pop("services", fake_services()),
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
    stack = EdgeStack(opts, output)
    try:
        stack.start(threading.Event())
        pids = {name: process.pid for name, process in stack.processes().items()}
        response = httpx.get(f"http://127.0.0.1:{opts.environ['GATEWAY_PORT']}/health/live", trust_env=False)
    finally:
        stack.stop()

    assert [name for name in pids] == [INFERENCE, EDGE_API, "gateway"]
    assert response.status_code == 200
    assert response.json()["path"] == "/health/live"
    assert all(pid is not None and gone(pid) for pid in pids.values())
    assert stack.running == []
    log = output.getvalue()
    bundle = tmp_path / ".intellioptics" / "data" / "models" / "det_fake" / "current"
    assert f"{DEMO_MODELS} | wrote {bundle}\n" in log
    assert f"{INFERENCE}   | listening on {opts.environ['INFERENCE_PORT']}\n" in log
    assert log.index("starting inference") < log.index("starting edge-api") < log.index("starting gateway")


def test_demo_models_are_built_only_when_the_model_root_is_empty(tmp_path):
    (tmp_path / ".intellioptics" / "data" / "models" / "det_old" / "current").mkdir(parents=True)
    output = io.StringIO()
    stack = EdgeStack(options(tmp_path, services=fake_services(demo="fail")), output)
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


def test_a_service_that_dies_stops_the_others_and_the_run_fails(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path, services=fake_services(edge_env={"FAKE_EXIT_AFTER": "1.5"}), demo_models=False)

    status = run(opts, output)

    assert status == 1
    log = output.getvalue()
    assert "edge-api exited with status 7; stopping the others" in log
    assert "stopped gateway" in log and "stopped inference" in log
    assert not (tmp_path / ".intellioptics" / "data" / "models" / "det_fake").exists()


def test_a_service_that_never_gets_healthy_fails_the_start_and_leaves_nothing(tmp_path):
    output = io.StringIO()
    services = fake_services()
    services[2] = Service(
        name=EDGE_API,
        argv=("python", "-c", "import time; print('stuck', flush=True); time.sleep(60)"),
        port=8718,
        port_env="EDGE_PORT",
        health_path="/health/live",
    )
    opts = options(tmp_path, services=services, startup_timeout=1.0)

    status = run(opts, output)

    assert status == 1
    log = output.getvalue()
    assert "cannot start the edge" in log and "not healthy" in log and "stuck" in log
    assert "stopped edge-api" in log and "stopped inference" in log
    assert "starting gateway" not in log


def test_sigterm_stops_the_run_cleanly(tmp_path):
    output = io.StringIO()
    opts = options(tmp_path)

    def terminate_when_up() -> None:
        # Only while run() owns SIGTERM: never signal the test process otherwise.
        for _ in range(400):
            if "the edge is up" in output.getvalue():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=terminate_when_up)
    killer.start()
    try:
        status = run(opts, output)
    finally:
        killer.join()

    assert status == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    log = output.getvalue()
    assert "the edge is up" in log
    assert log.index("stopped gateway") < log.index("stopped edge-api") < log.index("stopped inference")


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
