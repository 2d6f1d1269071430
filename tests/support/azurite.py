"""Azurite (the Azure Blob emulator from npm) as a real process on a free port, with its data in a
temp directory. Installed under build/azurite by `make test-tools` (scripts/bootstrap.sh --test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launcher.processes import ManagedProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / "build" / "azurite" / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_available() -> bool:
    return AZURITE_BIN.exists()


@dataclass
class Azurite:
    location: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def start(self) -> Azurite:
        if not azurite_available():
            raise RuntimeError(
                f"{AZURITE_BIN} is missing; run `make test-tools` (scripts/bootstrap.sh --test)"
            )
        self.location.mkdir(parents=True, exist_ok=True)
        # The binary itself, not npx: stopping an npx PID would leave its node child running.
        self.process = ManagedProcess(
            "azurite",
            [
                str(AZURITE_BIN),
                "--location",
                str(self.location),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ],
            cwd=self.location,
        ).start()
        wait_for_port("127.0.0.1", self.port, process=self.process, timeout=30)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
