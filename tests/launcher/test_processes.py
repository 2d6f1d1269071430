"""The process helper the launcher and other tests use to run servers."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from launcher.processes import ManagedProcess, ProcessError, free_port, wait_for_http, wait_for_port

pytestmark = pytest.mark.processes

PY = sys.executable


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_server_is_waited_for_and_stopped():
    port = free_port()
    lines: list[str] = []
    server = ManagedProcess(
        "web", [PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)], output=lines.append
    )
    with server:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=10, process=server)
        assert server.is_running()

    assert server.returncode is not None
    assert server.pid is not None and gone(server.pid)


def test_the_environment_reaches_the_child_over_the_inherited_one():
    lines: list[str] = []
    child = ManagedProcess(
        "env",
        [PY, "-c", "import os; print(os.environ['A'], 'PATH' in os.environ)"],
        env={"A": "x"},
        output=lines.append,
    )
    with child:
        child.wait(10)

    assert lines == ["x True"]


def test_waiting_on_a_child_that_exits_fails_at_once_with_its_output():
    child = ManagedProcess("bad", [PY, "-c", "print('no config'); raise SystemExit(2)"]).start()
    started = time.monotonic()
    try:
        with pytest.raises(ProcessError, match=r"exited with status 2(.|\n)*no config"):
            wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=30, process=child)
    finally:
        child.stop()

    assert time.monotonic() - started < 10


def test_waiting_gives_up_after_the_timeout():
    with pytest.raises(ProcessError, match="not healthy"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=0.3)
    with pytest.raises(ProcessError, match="nothing listens"):
        wait_for_port("127.0.0.1", free_port(), timeout=0.3)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    lines: list[str] = []
    child = ManagedProcess("stubborn", [PY, "-c", code], output=lines.append).start()
    while lines != ["ready"]:
        time.sleep(0.02)

    started = time.monotonic()
    status = child.stop(timeout=0.5)

    assert status == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_stopping_a_child_also_stops_what_it_spawned():
    code = "import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); p.wait()"
    lines: list[str] = []
    child = ManagedProcess("parent", [PY, "-c", code], output=lines.append).start()
    while not lines:
        time.sleep(0.02)
    grandchild = int(lines[0])

    child.stop()

    for _ in range(100):
        if gone(grandchild):
            break
        time.sleep(0.02)
    assert gone(grandchild)
