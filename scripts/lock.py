"""Write requirements/<name>.lock: the exact Python packages of each image, from the venv.

Each lock is one or more of pyproject.toml's optional-dependency groups together with its base
dependencies (what common/ imports), resolved transitively against the versions installed in the
environment that runs this script (the venv `make setup` builds, which the tests run in), for the
images' interpreter: CPython 3.11 on Linux x86_64 (python:3.11-slim). A pin is `name==version` with
no hash, and no local version label (torch's `+cpu`: the image's package index chooses that build).
Under each pin its comments say which packages need it (`via`), which of its extras are asked for
(`extras`) and what it needs itself at that version (`needs`, markers evaluated), so that
tests/launcher/test_dependency_locks.py can resolve pyproject.toml's groups against the lock itself.

    .venv/bin/python scripts/lock.py           # rewrite every lock
    .venv/bin/python scripts/lock.py --check   # exit 1 when a lock is not what it would write
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
LOCK_DIR = REPO / "requirements"
ROOT = "pyproject.toml"


@dataclass(frozen=True)
class Lock:
    groups: tuple[str, ...]
    # the Dockerfiles (docker/<image>.Dockerfile) that install it
    images: tuple[str, ...]

    def path(self, name: str) -> Path:
        return LOCK_DIR / f"{name}.lock"


LOCKS: Mapping[str, Lock] = {
    "edge": Lock(("edge",), ("edge-api", "inference", "updater")),
    "streams": Lock(("streams",), ("streams",)),
    "cloud": Lock(("cloud",), ("cloud-api", "cloud-worker")),
    "trainer": Lock(("training",), ("trainer", "demo-models")),
    "demo-detectors": Lock(("training", "cloud"), ("demo-detectors",)),
}

# The marker environment of the images' interpreter.
TARGET_PLATFORM = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_version": "3.11",
    "sys_platform": "linux",
}


class LockError(Exception):
    pass


def target_environment() -> dict[str, str]:
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(TARGET_PLATFORM)
    if not env["python_full_version"].startswith("3.11."):
        env["python_full_version"] = env["implementation_version"] = "3.11.0"
    return env


def applies(req: Requirement, extras: Iterable[str], env: Mapping[str, str]) -> bool:
    """Whether `req` is needed on the target with these extras of its requirer asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def requirement_text(req: Requirement) -> str:
    """`req` without its marker (already evaluated), its name canonical."""
    if req.url:
        raise LockError(f"{req}: a URL requirement cannot be pinned")
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in req.extras))}]" if req.extras else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}"


# --- what the groups ask for ----------------------------------------------------------------------------


def project_name(pyproject: Mapping[str, object]) -> NormalizedName:
    project = pyproject["project"]
    assert isinstance(project, dict)
    return canonicalize_name(project["name"])


def group_requirements(
    pyproject: Mapping[str, object], groups: Iterable[str], env: Mapping[str, str]
) -> list[Requirement]:
    """The base dependencies and those of `groups`, the project's own groups (`name[group]`) expanded."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    own = project_name(pyproject)
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[Requirement] = []
    seen: set[str] = set()

    def add(lines: Iterable[str]) -> None:
        for line in lines:
            req = Requirement(line)
            if not applies(req, (), env):
                continue
            if canonicalize_name(req.name) == own:
                expand(req.extras)
            else:
                out.append(req)

    def expand(names: Iterable[str]) -> None:
        for name in names:
            if name in seen:
                continue
            if name not in optional:
                raise LockError(f"pyproject.toml has no optional-dependencies group {name!r}")
            seen.add(name)
            add(optional[name])

    add(project.get("dependencies", []))
    expand(groups)
    return out


# --- resolution -----------------------------------------------------------------------------------------


@dataclass
class Found:
    """One package as a source knows it: its version and what it needs with given extras."""

    version: str
    needs: Callable[[frozenset[str]], list[Requirement]]


@dataclass
class Pin:
    name: NormalizedName
    version: str
    extras: set[str] = field(default_factory=set)
    via: set[str] = field(default_factory=set)
    needs: list[str] = field(default_factory=list)


Source = Callable[[NormalizedName], Found | None]


def resolve(roots: Iterable[Requirement], source: Source, own: str = "") -> tuple[dict[str, Pin], list[str]]:
    """Every package `roots` need, transitively, at the version `source` has; and what did not fit.

    Nothing is chosen: the source has one version of each package, and each requirement met on the
    way is checked against it.
    """
    pins: dict[str, Pin] = {}
    errors: list[str] = []
    queue: list[tuple[Requirement, str]] = [(req, ROOT) for req in roots]
    while queue:
        req, by = queue.pop(0)
        name = canonicalize_name(req.name)
        if name == own:
            errors.append(f"{by} needs {req}, the project itself")
            continue
        found = source(name)
        if found is None:
            errors.append(f"{by} needs {req}: there is none")
            continue
        if not req.specifier.contains(found.version, prereleases=True):
            errors.append(f"{by} needs {req}: there is {name}=={found.version}")
        asked = {canonicalize_name(e) for e in req.extras}
        pin = pins.get(name)
        if pin is None:
            pin = pins[name] = Pin(name, found.version)
            grown = True
        else:
            grown = not asked <= pin.extras
        pin.via.add(by)
        if grown:
            pin.extras |= asked
            try:
                needs = found.needs(frozenset(pin.extras))
            except LockError as exc:
                errors.append(str(exc))
                continue
            pin.needs = sorted({requirement_text(n) for n in needs})
            queue.extend((n, name) for n in needs)
    return dict(sorted(pins.items())), sorted(set(errors))


def installed_source(env: Mapping[str, str]) -> Source:
    """The distributions of the running environment (the first of a name on sys.path, as imports)."""
    dists: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        dists.setdefault(canonicalize_name(dist.metadata["Name"]), dist)

    def source(name: NormalizedName) -> Found | None:
        dist = dists.get(name)
        if dist is None:
            return None
        requires = [Requirement(line) for line in dist.requires or []]
        provided = {canonicalize_name(e) for e in dist.metadata.get_all("Provides-Extra") or []}

        def needs(extras: frozenset[str]) -> list[Requirement]:
            missing = extras - provided
            if missing:
                raise LockError(f"{name}=={dist.version} has no extra {', '.join(sorted(missing))}")
            return [req for req in requires if applies(req, extras, env)]

        return Found(dist.version, needs)

    return source


# --- the lock file --------------------------------------------------------------------------------------


def public(version: str) -> str:
    return Version(version).public


def render(name: str, lock: Lock, pins: Mapping[str, Pin]) -> str:
    lines = [
        f"# requirements/{name}.lock: the exact Python packages of the image(s) {', '.join(lock.images)}",
        f"# (docker/<image>.Dockerfile): pyproject.toml's base dependencies and group(s) {', '.join(lock.groups)},",
        "# resolved against the venv's versions for CPython 3.11 on Linux x86_64. Written by scripts/lock.py,",
        "# not by hand:  .venv/bin/python scripts/lock.py",
        "# Pins only, no hashes; no local version labels (the image's package index picks the build).",
        "",
    ]
    for pin in pins.values():
        lines.append(f"{pin.name}=={public(pin.version)}")
        lines.append(f"    # via: {', '.join(sorted(pin.via))}")
        if pin.extras:
            lines.append(f"    # extras: {', '.join(sorted(pin.extras))}")
        if pin.needs:
            lines.append(f"    # needs: {'; '.join(pin.needs)}")
    return "\n".join(lines) + "\n"


@dataclass
class Locked:
    version: str
    extras: frozenset[str]
    needs: list[str]


def parse(text: str) -> dict[str, Locked]:
    """A lock as render() writes it: {name: what its pin and comments say}."""
    out: dict[str, Locked] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or raw.startswith("#"):
            continue
        if line.startswith("#"):
            if current is None:
                raise LockError(f"line {number}: a comment under no pin")
            key, _, value = line[1:].strip().partition(": ")
            values = [v.strip() for v in value.split(";" if key == "needs" else ",") if v.strip()]
            if key == "extras":
                out[current].extras = frozenset(values)
            elif key == "needs":
                out[current].needs = values
            elif key != "via":
                raise LockError(f"line {number}: unknown comment {key!r}")
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.extras or req.marker or req.url:
            raise LockError(f"line {number}: {line!r} is not a pin (name==version)")
        current = canonicalize_name(req.name)
        if current in out:
            raise LockError(f"line {number}: {current} is pinned twice")
        out[current] = Locked(specs[0].version, frozenset(), [])
    return out


def locked_source(locked: Mapping[str, Locked]) -> Source:
    """A lock's own pins, and what each needs as its comments say."""

    def source(name: NormalizedName) -> Found | None:
        entry = locked.get(name)
        if entry is None:
            return None

        def needs(extras: frozenset[str]) -> list[Requirement]:
            missing = extras - entry.extras
            if missing:
                raise LockError(f"{name} is locked without its extra {', '.join(sorted(missing))}")
            return [Requirement(n) for n in entry.needs]

        return Found(entry.version, needs)

    return source


def read_pyproject() -> dict[str, object]:
    return tomllib.loads(PYPROJECT.read_text())


def from_venv(name: str, lock: Lock) -> str:
    """The text of lock `name` as the running environment resolves it; LockError when it cannot."""
    pyproject = read_pyproject()
    env = target_environment()
    roots = group_requirements(pyproject, lock.groups, env)
    pins, errors = resolve(roots, installed_source(env), own=project_name(pyproject))
    if errors:
        raise LockError(f"{name}.lock: " + "; ".join(errors))
    return render(name, lock, pins)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a lock would change")
    args = parser.parse_args(argv)
    if sys.version_info[:2] != (3, 11) or platform.system() != "Linux":
        print("run this with the venv's interpreter (CPython 3.11 on Linux), as the images", file=sys.stderr)
        return 2
    stale = []
    for name, lock in LOCKS.items():
        try:
            text = from_venv(name, lock)
        except LockError as exc:
            print(exc, file=sys.stderr)
            return 1
        path = lock.path(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(REPO))
        if not args.check:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
    verb = "stale" if args.check else "written"
    for path in stale:
        print(f"{verb}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
