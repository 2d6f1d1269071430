"""Ctrl-C and SIGTERM stop the launcher however they arrive: a terminal signals make and the launcher
together, and make forwards its own SIGTERM a moment later, so the handler can run twice in a row or
interrupt a wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.processes import StopFlag

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
# A launcher's main loop in miniature: waits in short steps until a stop is requested, then "cleans
# up" still under the handlers, as run() stops the services before it gives the signals back. The
# cleanup lasts until the sender says the burst is out: on a loaded machine the sender may be
# descheduled between two kills for longer than the loop takes to end, and a signal that arrives
# after the handlers are given back ends the process as its default action says, which is right.
WATCHER = """
import sys
from launcher.processes import StopFlag
from launcher.run import stop_on_signals

flag = StopFlag()
with stop_on_signals(flag):
    print("ready", flush=True)
    while not flag.wait(0.0005):
        pass
    sys.stdin.readline()
print("stopped", flush=True)
"""


def test_a_burst_of_signals_stops_the_watch_loop_every_time():
    for attempt in range(25):
        child = subprocess.Popen(
            [sys.executable, "-c", WATCHER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            time.sleep(0.005)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
                os.kill(child.pid, sig)
            child.stdin.write("burst sent\n")
            child.stdin.flush()
            # A hang guard: a handler that waits for a lock its own thread holds never returns.
            assert child.wait(timeout=20) == 0, f"attempt {attempt}"
            assert child.stdout.read() == "stopped\n"
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
            child.stdin.close()


def test_the_flag_waits_until_set_or_timed_out():
    flag = StopFlag()
    assert flag.wait(0.05) is False and not flag.is_set()
    threading.Timer(0.05, flag.set).start()
    assert flag.wait(10) is True and flag.is_set()
    # Once set it stays set, and waiting returns at once.
    assert flag.wait(0) is True


@pytest.mark.parametrize("timeout", [0, -1])
def test_a_wait_without_time_left_only_looks(timeout: float):
    assert StopFlag().wait(timeout) is False
