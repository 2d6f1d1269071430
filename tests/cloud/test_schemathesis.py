"""Property: whatever a client sends to any documented operation, the cloud never answers with a 5xx.

Schemathesis generates requests from the running cloud's OpenAPI document (the documented examples,
boundary values, then a bounded number of random ones per operation), once with an admin token and
once with a device token, and checks only `not_a_server_error`. It runs as its own process (its
pytest plugin does not support this pytest); a failure lists each operation and a curl command that
reproduces it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_worker import Tokens, private_database, seed_tokens

pytestmark = pytest.mark.slow

# Random requests per operation, after the documented examples (and, for the admin, the boundary
# values): enough to find what breaks on odd input, few enough that both runs take well under two
# minutes. Admins pass every role check, so the admin run reaches every operation's logic and gets the
# boundary values; the device run checks the same property through the device's role.
EXAMPLES_PER_OPERATION = 8
PHASES = {"admin": "examples,coverage,fuzzing", "device": "examples,fuzzing"}
SEED = 20240601


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.mark.parametrize("caller", sorted(PHASES))
def test_no_request_makes_the_cloud_answer_with_a_5xx(
    cloud: CloudServer, tokens: Tokens, caller: str, tmp_path: Path
) -> None:
    token: str = getattr(tokens, caller)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{cloud.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"x-api-token: {token}",
        "--phases",
        PHASES[caller],
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        # One worker: Hypothesis parses lambda sources with `ast`, which is not thread-safe on 3.11.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--warnings",
        "off",
        "--output-truncate",
        "true",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, (
        f"server errors with the {caller} token:\n{_report(result.stdout)}{result.stderr[-4000:]}"
    )


def _report(stdout: str) -> str:
    """The failures and the summary, without the progress lines before them."""
    start = stdout.find("= FAILURES =")
    return stdout[max(0, start - 40) :] if start >= 0 else stdout[-20000:]
