"""The code names no path outside the repository, and no repository file that does not exist.

Scanned: every text file under common/, edge/, cloud/ and training/ that git tracks or would add
(modules, templates, static files, documents). A checkout can live anywhere and runs from its root
(`make run`, pytest) or from /app (the images), so what the code finds must come from there. Flagged:

1. A relative path that climbs above where it starts: normalised, it begins with `../`. Relative to
   the working directory (the repository root) it leaves the repository: find files from `__file__`
   (`Path(__file__).parents[n]`) or the settings instead. `a/../b` is fine; `...` is an ellipsis.
2. An absolute path of one machine or one person: the workspace (`/work`), a home (`/root`,
   `/home/<user>`, `/Users/<user>`, `~/`, `C:\\Users\\`), a mount (`/mnt/<x>`), or a fixed name under
   `/tmp` or `/var/tmp` (a project location in a scratch directory every run and user shares). A
   scratch directory itself (`/tmp`, `tempfile`) is fine, and so are the paths the images define
   (`/data/...`, `/config`, `/run/secrets/...`, `/app`) and those of system packages (`/usr/...`,
   `/etc/...`, `/proc/...`).
3. A file named that the repository lacks: a document by name (`*.md`, `*.rst`, bare or with its
   folders) or a repository path (a top-level folder of the repository, then a file with an extension).

tests/unit/test_docs.py checks every tracked file for citations of the old design and wire notes by
name and section and of documents under a `shared` folder, and that `docs/<name>.md §n` has section n;
this test is about paths, in the code folders, of any name.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("common", "edge", "cloud", "training")

# Characters of a path token (f-string and shell placeholders included).
_PATH = r"[\w.$~{}/-]"
CLIMBING = re.compile(rf"(?<![\w.$~{{}}/-]){_PATH}*\.\./{_PATH}*")
_END = r"(?=[/\"'`\s)\]},;:]|$)"
MACHINE = re.compile(
    "|".join(
        (
            rf"(?<![\w.~-])/work{_END}",
            rf"(?<![\w.~-])/root{_END}",
            r"(?<![\w.~-])/(?:home|Users|mnt)/[\w.{$-]",
            r"(?<![\w.~-])(?:/var)?/tmp/[\w.{$-]",
            r"(?<![\w~/.-])~/[\w.{$-]",
            r"\b[A-Za-z]:\\\\?Users\\",
        )
    ),
    re.MULTILINE,
)
DOCUMENT = re.compile(r"(?<![\w./-])(?:[\w.-]+/)*[\w-][\w.-]*\.(?:md|rst)\b")


def repository_files() -> list[str]:
    """Paths (relative, `/`-separated) of what git tracks or would add; a walk without git."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8", "surrogateescape")
        return [path for path in listing.split("\0") if path and (ROOT / path).is_file()]
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        found += [Path(folder, name).relative_to(ROOT).as_posix() for name in files]
    return found


@cache
def _listing() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    files = repository_files()
    return (
        frozenset(files),
        frozenset(path.rsplit("/", 1)[-1] for path in files),
        frozenset(path.split("/", 1)[0] for path in files if "/" in path),
    )


def repository_path(top_dirs: Iterable[str]) -> re.Pattern[str]:
    folders = "|".join(sorted(map(re.escape, top_dirs)))
    return re.compile(rf"(?<![\w./-])(?:{folders})/[\w./-]*\.[A-Za-z0-9]+\b")


def code_files() -> Iterator[tuple[str, str]]:
    """(path, text) of the text files under the code folders."""
    files, _, _ = _listing()
    for path in sorted(files):
        if path.split("/", 1)[0] not in CODE_DIRS:
            continue
        data = (ROOT / path).read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def _exists(name: str, where: str, files: frozenset[str], basenames: frozenset[str]) -> bool:
    if "/" not in name:
        return name in basenames
    folder = posixpath.dirname(where)
    return any(posixpath.normpath(candidate) in files for candidate in (name, f"{folder}/{name}"))


def problems_in(
    path: str,
    text: str,
    files: frozenset[str],
    basenames: frozenset[str],
    top_dirs: Iterable[str],
) -> list[str]:
    """`path:line: 'found': why` for each outside or missing path in `text` (from the file `path`)."""
    found: list[tuple[int, str, str]] = []
    for match in CLIMBING.finditer(text):
        token = match.group(0)
        if posixpath.normpath(token).split("/", 1)[0] == "..":
            found.append((match.start(), token, "climbs out of where it starts (the repository root)"))
    for match in MACHINE.finditer(text):
        found.append((match.start(), match.group(0), "a path of one machine or person"))
    named = [*DOCUMENT.finditer(text), *repository_path(top_dirs).finditer(text)]
    for match in sorted(named, key=lambda m: m.start()):
        token = match.group(0)
        if not token.startswith("..") and not _exists(token, path, files, basenames):
            found.append((match.start(), token, "not in the repository"))
    return [
        f"{path}:{text.count(chr(10), 0, start) + 1}: {token!r}: {why}"
        for start, token, why in sorted(set(found))
    ]


def test_the_code_names_no_path_outside_the_repository() -> None:
    files, basenames, top_dirs = _listing()
    scanned = list(code_files())
    assert len(scanned) > 100, "the code folders look empty: is the listing broken?"

    problems = [
        line for path, text in scanned for line in problems_in(path, text, files, basenames, top_dirs)
    ]

    assert not problems, "\n".join(problems)


def test_the_matcher_catches_outside_paths_and_passes_the_paths_the_code_may_name() -> None:
    files = frozenset({"docs/wire.md", "README.md", "cloud/app/web/templates/base.html", "common/x.py"})
    basenames = frozenset(path.rsplit("/", 1)[-1] for path in files)

    def flagged(text: str) -> list[str]:
        return problems_in("common/sample.py", text, files, basenames, ("docs", "common", "scripts"))

    bad = [
        'Path("../shared/hooks")',
        "../x",
        "a/../../b",
        "/work",
        "/work/main/config",
        'open("/root/.cache/x")',
        "/home/alice/models",
        "/Users/bob/models",
        "~/.cache/intellioptics",
        "/tmp/intellioptics/models",
        'f"/tmp/{name}.db"',
        "/var/tmp/x",
        "/mnt/data",
        r"C:\Users\me",
        "see " + "STYLE" + ".md",
        "docs/nothing.md",
        "scripts/missing.py",
    ]
    for text in bad:
        assert flagged(text), text

    good = [
        "/tmp",
        "TMPDIR (/tmp by default), tempfile.gettempdir()",
        "/data/models and /run/secrets/api-token, /config/edge-config.yaml, /app",
        "/usr/share/datasets/fashion-mnist, /etc/nginx/templates, /proc/<pid>/environ",
        "docs/wire.md, README.md",
        "DELETE .../skip",
        "http://host:8000/work/x and /workers and /rooted",
        "Path(__file__).parent / '..'",
        "common/../common/x.py",
        "templates/base.html",
        "x.md5sum and docs/<name>.md",
    ]
    for text in good:
        assert flagged(text) == [], text
    assert flagged("line one\nsee /work/x") == [
        "common/sample.py:2: '/work': a path of one machine or person"
    ]
