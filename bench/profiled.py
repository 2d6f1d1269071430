"""Run a service module with cProfile switched on and off by signals, to profile steady state only.

    python -m bench.profiled MODULE OUTPUT.prof

SIGUSR1 starts profiling the main thread (where the service's event loop runs), SIGUSR2 stops it and
writes OUTPUT.prof. Start-up, imports and model loading stay out of the profile.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.profiled MODULE OUTPUT.prof")
    module, output = sys.argv[1], sys.argv[2]
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(output)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
