"""Each `python -m …` entry point builds its service from its settings and hands it to the one way we
serve (common.http.serve), run here without a process or a socket; and the edge's token command line
adds, lists and removes tokens."""

from __future__ import annotations

import contextlib
import importlib
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

import common.http
import common.log_redaction
from edge.api import tokens
from edge.api.auth.local_tokens import read_tokens

SERVICES = {
    "edge.api": ("EDGE_PORT", "IntelliOptics edge API"),
    "edge.inference": ("INFERENCE_PORT", "IntelliOptics inference"),
    "edge.updater": ("UPDATER_PORT", "IntelliOptics model updater"),
    "edge.streams": ("STREAMS_PORT", None),
    "cloud.app": ("CLOUD_PORT", "IntelliOptics cloud API"),
}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_serve(app: Any, host: str, port: int, **options: Any) -> None:
        calls.append({"app": app, "host": host, "port": port, **options})

    monkeypatch.setattr(common.http, "serve", fake_serve)
    monkeypatch.setattr(common.http, "configure_logging", lambda level="info": None)
    monkeypatch.setattr(common.log_redaction, "install_secret_redaction", lambda: None)
    for prefix in ("EDGE", "INFERENCE", "UPDATER", "STREAMS", "CLOUD"):
        monkeypatch.setenv(f"{prefix}_DATA_DIR", str(tmp_path / prefix.lower()))
    monkeypatch.setenv("INFERENCE_MODEL_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("UPDATER_MODEL_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("CLOUD_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-for-tests")
    return calls


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_each_service_module_serves_its_app_on_its_configured_port(
    module: str, served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port_variable, title = SERVICES[module]
    monkeypatch.setenv(port_variable, "18765")
    runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert len(served) == 1
    call = served[0]
    assert call["port"] == 18765
    assert isinstance(call["app"], FastAPI)
    if title is not None:
        assert call["app"].title == title


@pytest.mark.parametrize(
    ("module", "target"),
    [("training.service", "training.service.loop"), ("cloud.worker", "cloud.worker.loop")],
)
def test_the_worker_modules_run_their_loops_main(
    module: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(importlib.import_module(target), "main", lambda: ran.append(module) or 0)
    exits = pytest.raises(SystemExit) if module == "training.service" else contextlib.nullcontext()
    with exits:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert ran == [module]


def test_python_dash_m_training_is_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["intellioptics", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("training", run_name="__main__", alter_sys=False)
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_token_command_line_adds_lists_and_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.json"
    assert tokens.main(["--file", str(path), "add", "line-3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    new_token = printed[-1]
    assert new_token.startswith(tokens.NEW_TOKEN_PREFIX) and new_token not in path.read_text()
    assert tokens.main(["--file", str(path), "add", "ops", "--admin", "--token", "io_" + "k" * 30]) == 0
    assert [(t.name, str(t.role)) for t in read_tokens(path)] == [("line-3", "device"), ("ops", "admin")]
    capsys.readouterr()
    assert tokens.main(["--file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert "line-3\tdevice\tsha256:" in listed and new_token not in listed
    assert tokens.main(["--file", str(path), "add", "short", "--token", "io_short"]) == 2
    assert tokens.main(["--file", str(path), "remove", "line-3"]) == 0
    assert tokens.main(["--file", str(path), "remove", "line-3"]) == 1
    assert [t.name for t in read_tokens(path)] == ["ops"]
