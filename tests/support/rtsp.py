"""A real RTSP source on loopback: Debian's rtsp-server-perl as the server cameras' clients talk to, fed
by Debian's ffmpeg pushing a generated test video (ffmpeg alone cannot serve RTSP to players).

Readers must use UDP transport (`rtsp_transport: udp` in a stream's config): the relay refuses TCP.
`stop()` takes the whole source down (server and feed) and `start()` brings it back on the same ports,
which is what a camera rebooting looks like to a reader.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field

from launcher.processes import ManagedProcess, free_port, wait_for_port

RELAY = "rtsp-server-perl"
FFMPEG = "ffmpeg"
# rtsp-server-perl goes back to the module's RTP base port (20000) whenever it has no stream mounted,
# whatever --rtp_start_port said; set the base itself so that relays of parallel runs do not collide.
_RELAY_WITH_BASE_PORT = (
    "perl",
    "-MRTSP::Server",
    "-e",
    "$RTSP::Server::RTP_START_PORT = shift @ARGV; do $ENV{RELAY_SCRIPT}; die $@ if $@",
)


def rtsp_tools_missing() -> str | None:
    """Why a real RTSP source cannot run here (a skip reason), or None."""
    missing = [tool for tool in (RELAY, FFMPEG) if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)} (Debian packages; scripts/bootstrap.sh --test installs them)"
    return None


@dataclass
class RtspSource:
    path: str = "live"
    fps: int = 10
    size: str = "320x240"
    client_port: int = field(default_factory=free_port)
    source_port: int = field(default_factory=free_port)
    # The relay hands out UDP ports upwards from here, two per client and per feed.
    rtp_start_port: int = field(default_factory=lambda: random.randrange(21000, 29000, 2))
    relay: ManagedProcess | None = None
    feed: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/{self.path}"

    def start(self) -> RtspSource:
        self.relay = ManagedProcess(
            "rtsp-relay",
            [
                *_RELAY_WITH_BASE_PORT,
                str(self.rtp_start_port),
                "--clientport",
                str(self.client_port),
                "--serverport",
                str(self.source_port),
                "--client_listen_address",
                "127.0.0.1",
                "--source_listen_address",
                "127.0.0.1",
                "--rtp_start_port",
                str(self.rtp_start_port),
            ],
            env={"RELAY_SCRIPT": shutil.which(RELAY) or RELAY},
        ).start()
        wait_for_port("127.0.0.1", self.client_port, process=self.relay, timeout=20)
        wait_for_port("127.0.0.1", self.source_port, process=self.relay, timeout=20)
        self.feed = ManagedProcess(
            "rtsp-feed",
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
                f"testsrc=size={self.size}:rate={self.fps}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
                "-g",
                str(self.fps),
                "-pix_fmt",
                "yuv420p",
                "-f",
                "rtsp",
                f"rtsp://127.0.0.1:{self.source_port}/{self.path}",
            ],
        ).start()
        return self

    def stop(self) -> None:
        for proc in (self.feed, self.relay):
            if proc is not None:
                proc.stop(timeout=5)
        self.feed = self.relay = None

    def restart(self) -> None:
        self.stop()
        self.start()
