"""Render a compose file the way `docker compose config` does, for hosts without Docker Compose.

Only what the tests need: `.env` files (compose's format: `KEY=VALUE`, `#` comments, optional quotes),
interpolation of every string value (`$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`, `${VAR+other}`, nested in defaults), YAML anchors
and merge keys (PyYAML resolves them), and the merge of an override file over a base (mappings merged
key by key, everything else replaced: enough for docker-compose.gpu.yml, which only adds mappings).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    """A required variable is missing, or a `${` is never closed."""


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _NAME.fullmatch(key):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
        values[key] = value
    return values


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2 : end], environ))
            i = end + 1
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                out.append("$")
                i += 1
            else:
                out.append(environ.get(match.group(), ""))
                i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text.startswith("${", j):
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise InterpolationError(f"unclosed ${{ in {text!r}")


def _braced(inner: str, environ: Mapping[str, str]) -> str:
    match = _NAME.match(inner)
    if match is None:
        raise InterpolationError(f"invalid interpolation ${{{inner}}}")
    name, rest = match.group(), inner[match.end() :]
    value = environ.get(name)
    if not rest:
        return value or ""
    colon = rest.startswith(":")
    operator, argument = (rest[1], rest[2:]) if colon else (rest[0], rest[1:])
    unset = value is None or (colon and value == "")
    if operator == "-":
        return interpolate(argument, environ) if unset else value or ""
    if operator == "?":
        if unset:
            raise InterpolationError(f"required variable {name} is missing a value: {argument}")
        return value or ""
    if operator == "+":
        return "" if unset else interpolate(argument, environ)
    raise InterpolationError(f"invalid interpolation ${{{inner}}}")


def interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [interpolate_tree(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, environ) for key, value in node.items()}
    return node


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def render(paths: list[Path], environ: Mapping[str, str]) -> dict[str, Any]:
    """The files merged in order, interpolated, `x-` extensions dropped (as `docker compose config`)."""
    document: dict[str, Any] = {}
    for path in paths:
        document = merge(document, load(path))
    rendered: dict[str, Any] = interpolate_tree(document, environ)
    return {key: value for key, value in rendered.items() if not key.startswith("x-")}


def variables(text: str) -> set[str]:
    """The names a compose file interpolates (`$$` escapes excluded)."""
    unescaped = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", unescaped)) | set(
        re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", unescaped)
    )
