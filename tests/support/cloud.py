"""The cloud API as a real process: a fresh PostgreSQL database (or SQLite) and `python -m cloud.app`
on a free port, with known first-start accounts."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from launcher.processes import ManagedProcess, free_port, wait_for_http
from tests.support.in_process import AppThread

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

ADMIN_PASSWORD = "admin-password-for-tests"
REVIEWER_PASSWORD = "reviewer-password-for-tests"
DEVICE_TOKEN = "io_devicetokenfortests_" + "x" * 24


# Read at import (collection time), before the session fixture scrubs CLOUD_* variables.
_TEST_DB = os.environ.get("CLOUD_TEST_DB", "postgres")


def use_sqlite() -> bool:
    """CLOUD_TEST_DB=sqlite runs the cloud tests on the embedded database instead of PostgreSQL."""
    return _TEST_DB == "sqlite"


@dataclass
class TestDatabase:
    """A database that exists for one test session and is dropped after."""

    workdir: Path
    name: str = field(default_factory=lambda: "io_test_" + secrets.token_hex(6))

    @property
    def url(self) -> str:
        if use_sqlite():
            return f"sqlite:///{self.workdir / 'cloud.db'}"
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        return f"{base}/{self.name}"

    def create(self) -> TestDatabase:
        if not use_sqlite():
            asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        return self

    def drop(self) -> None:
        if not use_sqlite():
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


@dataclass
class CloudServer:
    database_url: str
    workdir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "cloud-data"

    def start(self) -> CloudServer:
        self.process = self.launch()
        wait_for_http(f"{self.url}/health/ready", process=self.process, timeout=60)
        return self

    def environment(self) -> dict[str, str]:
        """What the service is configured with: its port, data, first-start accounts, and `env`."""
        return {
            "DATABASE_URL": self.database_url,
            "CLOUD_PORT": str(self.port),
            "CLOUD_PUBLIC_URL": self.url,
            "CLOUD_DATA_DIR": str(self.data_dir),
            "CLOUD_API_TOKEN_FILE": str(self.workdir / "api-token"),
            "CLOUD_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CLOUD_BOOTSTRAP_REVIEWER_PASSWORD": REVIEWER_PASSWORD,
            "CLOUD_BOOTSTRAP_API_TOKEN": DEVICE_TOKEN,
            "CLOUD_LOG_LEVEL": "warning",
            **self.env,
        }

    def launch(self, name: str = "cloud-api") -> ManagedProcess:
        """`python -m cloud.app` on this server's port, not waited for (replicas start side by side)."""
        return ManagedProcess(
            name, [sys.executable, "-m", "cloud.app"], env=self.environment(), cwd=ROOT
        ).start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def seed_demo(self, model_root: Path, *args: str) -> None:
        """Register the demo detectors (cloud.app.seed_demo), as `make run` does; extra args pass through."""
        seed = ManagedProcess(
            "seed-demo",
            [sys.executable, "-m", "cloud.app.seed_demo", "--model-root", str(model_root), *args],
            env={"DATABASE_URL": self.database_url, "CLOUD_DATA_DIR": str(self.data_dir)},
            cwd=ROOT,
        ).start()
        status = seed.wait(120)
        seed.stop()
        assert status == 0, seed.output_tail()

    def client(self, token: str | None = DEVICE_TOKEN, **kwargs: object) -> httpx.Client:
        headers = {"x-api-token": token} if token else {}
        return self._http(headers=headers, **kwargs)

    def _http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def login(self, username: str = "reviewer", password: str = REVIEWER_PASSWORD) -> httpx.Client:
        """A client holding a reviewer's (or admin's) session cookie, as a browser would."""
        # A browser sends its Origin with each write; the cloud refuses cookie writes without one.
        client = self._http(headers={"Origin": self.url})
        resp = client.post("/login", data={"username": username, "password": password})
        assert resp.status_code in (200, 303), resp.text
        return client


def cloud_kind(node: Any) -> type[CloudServer]:
    """The cloud a test module gets: the app inside the test process where the module (a pytest node)
    is marked `in_process`, else a process."""
    return InProcessCloud if node.get_closest_marker("in_process") else CloudServer


@dataclass
class InProcessCloud(CloudServer):
    """The same cloud app inside the test process (tests.support.in_process): the same first-start
    accounts and settings, its prestart (migrations, seeding) run here; `url` names no socket, and
    only this object's clients reach it (no SDK, browser or edge can)."""

    served: AppThread | None = None

    @property
    def url(self) -> str:
        return "http://cloud.in-process"

    def start(self) -> InProcessCloud:
        from cloud.app.app import create_app
        from cloud.app.prestart import prestart
        from cloud.app.settings import CloudSettings

        saved = dict(os.environ)
        os.environ.update(self.environment())
        try:
            settings = CloudSettings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        asyncio.run(prestart(settings))
        self.served = AppThread(create_app(settings)).start()
        return self

    def stop(self) -> None:
        if self.served is not None:
            self.served.stop()
            self.served = None

    def _http(self, **kwargs: Any) -> httpx.Client:
        assert self.served is not None, "start() first"
        return self.served.client(self.url, timeout=30, **kwargs)
