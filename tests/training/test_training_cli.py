"""`intellioptics train` (and `python -m training`): an export file in, a bundle and plots out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from common.bundle import verify_bundle
from common.runtime import ModelRuntime
from training.cli import main

from .synthetic import write_digit_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def export_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_export(tmp_path_factory.mktemp("cli") / "digits.tar.gz", 300, name="cli-digits")


def test_train_writes_a_bundle_plots_and_a_summary(
    export_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", "--detector", "cli-digits", "--from-export", str(export_file), "--out", str(out)]
    code = main([*args, "--epochs", "2", "--threads", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["bundle"] == str(out / "bundle") and summary["epochs_run"] <= 2
    verify_bundle(out / "bundle")
    ModelRuntime(out / "bundle").warmup()
    for name in ("learning_curves.png", "confusion_matrix.png", "reliability.png", "metrics.json"):
        assert (out / "reports" / name).is_file()
    assert (out / "checkpoint.pt").is_file()
    progress = captured.err.splitlines()
    assert any(line.startswith("[train] epoch 1/2 [") and "ETA" in line for line in progress)
    assert any(line.startswith("[done]") for line in progress)


def test_options_file_and_flags_are_applied(
    export_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("epochs: 5\nbalance: sampler\nmax_rotation: 0\nseed: 7\n")
    args = [
        "train",
        "--detector",
        "cli-digits",
        "--from-export",
        str(export_file),
        "--out",
        str(tmp_path / "o"),
    ]
    code = main(
        [*args, "--config", str(config), "--epochs", "1", "--threads", "1", "--device", "cpu", "--quiet"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "o" / "reports" / "metrics.json").read_text())
    config_used = metrics["lineage"]["training_config"]
    assert (config_used["epochs"], config_used["balance"], config_used["seed"]) == (1, "sampler", 7)
    assert not captured.err.startswith("[prepare]")


def test_wrong_detector_or_bad_export_exits_2(
    export_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--from-export", str(export_file), "--out", str(tmp_path / "x")]
    assert main([*base, "--detector", "someone-else"]) == 2
    assert "not 'someone-else'" in capsys.readouterr().err
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    assert (
        main(["train", "--detector", "d", "--from-export", str(tmp_path / "junk.tar.gz"), "--out", "x"]) == 2
    )
    assert "not a readable tar.gz" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.processes
def test_python_dash_m_training_is_the_same_command_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "training", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0 and "--from-export" in out.stdout


def test_intellioptics_console_script_points_at_the_cli() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("intellioptics") == "training.cli:main"
