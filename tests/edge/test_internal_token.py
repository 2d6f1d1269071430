"""The edge services' shared secret: made once by whichever service starts first, the same for all."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.internal_auth import InternalTokenSettings, load_or_create_token, token_matches


def test_services_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "internal-token"
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: load_or_create_token(path), range(32)))

    assert len(tokens) == 1 and len(tokens.pop()) == 64
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["internal-token"]  # no leftovers


def test_the_variable_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTELLIOPTICS_INTERNAL_TOKEN_FILE", str(tmp_path / "token"))
    from_file = InternalTokenSettings().resolved_internal_token()
    assert (tmp_path / "token").read_text().strip() == from_file

    monkeypatch.setenv("INTELLIOPTICS_INTERNAL_TOKEN", "given")
    assert InternalTokenSettings().resolved_internal_token() == "given"


def test_an_empty_file_is_an_error_not_an_empty_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_or_create_token(tmp_path / "token")


def test_nothing_matches_an_unset_secret() -> None:
    assert not token_matches("", "")
    assert not token_matches("", "x")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "abd")
    assert token_matches("abc", "abc")
