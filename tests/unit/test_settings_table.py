"""README's settings tables are the ones scripts/settings_table.py renders from the settings classes.

Every field of every service's settings class has a description (the table's text) and appears in the
table under the variable pydantic-settings really reads (common.secret_files.field_variable).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from common.secret_files import field_variable

REPO = Path(__file__).resolve().parents[2]
STALE = "README.md's settings tables are stale: run `make settings-table`"


def _load_script() -> ModuleType:
    path = REPO / "scripts" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("intellioptics_settings_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


table = _load_script()
SECTIONS = table.sections()
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_readme_block_is_what_the_script_renders():
    assert table.readme_block(README) == table.render(), STALE


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.settings.__name__)
def test_every_field_has_a_description(section):
    undescribed = [
        name for name, field in section.settings.model_fields.items() if not (field.description or "").strip()
    ]

    assert undescribed == [], f"{section.settings.__name__}: give these Fields a description"


def test_every_field_of_every_class_is_in_a_table():
    tabled = {section.settings for section in SECTIONS}
    for section in SECTIONS:
        inherited = set(section.shared.model_fields) if section.shared is not None else set()
        assert section.shared is None or section.shared in tabled, section.shared
        assert set(section.field_names()) | inherited == set(section.settings.model_fields)


def test_each_row_names_the_variable_that_is_read_and_marks_the_secrets_read_from_files():
    block = table.readme_block(README)
    for section in SECTIONS:
        cls = section.settings
        for name in section.field_names():
            cell = table.variable_text(cls, name)
            assert cell.startswith(f"`{field_variable(cls, name)}`"), (cls.__name__, name)
            assert f"\n| {cell} |" in block, (cls.__name__, name)
            assert (table.FILE_MARK in cell) == (name in getattr(cls, "secret_fields", ())), name


@pytest.mark.parametrize(
    "variable",
    [
        "INFERENCE_MAX_BATCH",
        "STREAMS_LOG_LEVEL",
        "TRAINER_HTTP_TIMEOUT_S",
        "TRAINER_LOG_LEVEL",
        "INTELLIOPTICS_INTERNAL_TOKEN_FILE",
        "CLOUD_DATABASE_URL",
    ],
)
def test_the_table_lists_settings_the_hand_kept_one_missed(variable):
    assert f"| `{variable}`" in table.readme_block(README)


def test_no_default_shown_is_machine_specific():
    block = table.readme_block(README)
    assert str(REPO) not in block
    host = socket.gethostname()
    if len(host) >= 6:
        assert host not in block


def test_a_computed_default_without_its_text_is_refused():
    class Computed(BaseSettings):
        value: int = Field(default_factory=lambda: 3, description="A computed value.")

    with pytest.raises(table.SettingsTableError, match="computed default"):
        table.render([table.Section("computed", Computed)])
