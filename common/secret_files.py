"""Secret settings from files: each secret variable `X` of a settings class also reads `X_FILE`.

Compose and Docker mount secrets as files (`/run/secrets/<name>`), which keeps them out of the
container's environment (`docker inspect`, `/proc/<pid>/environ`, crash reports). A settings class
that derives from `SecretFileSettings` and lists fields in `secret_fields` reads, for each of them,
the file that `<its variable>_FILE` names:

- the value is the file's content without trailing line breaks (as the postgres image reads
  `POSTGRES_PASSWORD_FILE`, so both sides of one secret file agree); an empty file is an empty value,
  as an empty variable is;
- an unset or empty `X_FILE` changes nothing;
- a missing or unreadable file is an error (`SecretFileError`) that names the variable and the path:
  the service does not start with a secret it was told to read and could not;
- `X` and `X_FILE` both set (non-empty) is an error too: neither silently wins over the other;
- values passed to the constructor win over both (code and tests).

Settings that already had a file of their own before this (`UPDATER_API_TOKEN_FILE`,
`TRAINER_API_TOKEN_FILE`, `EDGE_ADMIN_TOKEN_FILE`, `INTELLIOPTICS_INTERNAL_TOKEN_FILE`) keep their own
rules (read when needed; created when missing): a class cannot list a field with a `<field>_file`
sibling.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

FILE_SUFFIX = "_FILE"


class SecretFileError(ValueError):
    """A `*_FILE` variable names a file that cannot be read, or conflicts with its variable."""


def read_secret_file(path: str | os.PathLike[str], variable: str = "") -> str:
    """The secret in `path`: its content without trailing line breaks."""
    where = f"{variable}={os.fspath(path)}" if variable else os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise SecretFileError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise SecretFileError(f"{where}: not readable by this user (uid {os.getuid()})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"{where}: cannot be read ({exc})") from None
    return text.rstrip("\r\n")


def secret_file_values(variables: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """For each `key -> variable` whose `<variable>_FILE` is set in `environ`: key -> the file's secret."""
    values: dict[str, str] = {}
    for key, variable in variables.items():
        file_variable = variable + FILE_SUFFIX
        path = environ.get(file_variable, "")
        if not path:
            continue
        if environ.get(variable, ""):
            raise SecretFileError(
                f"{variable} and {file_variable} are both set: set only one of them "
                f"({file_variable} for a secret file)"
            )
        values[key] = read_secret_file(path, file_variable)
    return values


def field_variable(settings_cls: type[BaseSettings], name: str) -> str:
    """The environment variable pydantic-settings reads for a field (its alias, else prefix + name)."""
    field = settings_cls.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((choice for choice in alias.choices if isinstance(choice, str)), None)
    if isinstance(alias, str):
        return alias.upper()
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return (prefix + name).upper()


class SecretFilesSource(PydanticBaseSettingsSource):
    """The `*_FILE` variants of a class's `secret_fields`, read from the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], fields: tuple[str, ...]) -> None:
        super().__init__(settings_cls)
        self.variables = {name: field_variable(settings_cls, name) for name in fields}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = self.variables.get(field_name)
        if variable is None:
            return None, field_name, False
        values = secret_file_values({field_name: variable}, os.environ)
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # Keyed the way the other sources key their values: by alias where the field has one.
        values = secret_file_values(self.variables, os.environ)
        return {self._key(name): value for name, value in values.items()}

    def _key(self, name: str) -> str:
        alias = self.settings_cls.model_fields[name].validation_alias
        if isinstance(alias, AliasChoices):
            alias = next((choice for choice in alias.choices if isinstance(choice, str)), None)
        return alias if isinstance(alias, str) else name


class SecretFileSettings(BaseSettings):
    """Settings whose `secret_fields` may come from files (see the module's rules)."""

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name in cls.secret_fields:
            if name not in cls.model_fields:
                raise TypeError(f"{cls.__name__}.secret_fields names {name!r}, which is not a field")
            if f"{name}_file" in cls.model_fields:
                raise TypeError(
                    f"{cls.__name__}.{name} has a {name}_file field of its own, which "
                    f"{field_variable(cls, name)}{FILE_SUFFIX} already sets"
                )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Before the environment: compose sets `X: ""` beside `X_FILE`, and the file must win over
        # that empty value (a non-empty one is refused).
        secret_files = SecretFilesSource(settings_cls, cls.secret_fields)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings
