"""Documentation references resolve inside the repository.

(a) No tracked text file cites a document that lives outside the repository: the old design and wire
notes, by name or by section, or a document under a top-level `shared` folder.
(b) Every citation of a repository document with a section (docs, then a name, `.md`, a section sign
and a number) names a file under `docs/` that has a `## <number>.` heading.

The patterns are assembled from pieces so that this file does not match them itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "\N{SECTION SIGN}"

_DESIGN = "DES" + "IGN"
_WIRE_NOTE = "groundlight" + "-wire"
_SHARED = "sha" + "red/"
OUTSIDE_REFERENCES = re.compile(
    "|".join(
        (
            rf"\b{_DESIGN}\s*{SECTION}",  # a section of the old design note
            rf"\b{_DESIGN}\.md\b",
            rf"\b{_WIRE_NOTE}\.md\b",
            rf"\bwire doc\s*{SECTION}",  # the wire note by nickname
            rf"(?<![\w.-]){_SHARED}[\w./-]*\.md\b",  # any document under shared/
        )
    )
)
# "docs/<name>.md §3", also "docs/<name>.md §5, §7" and "… §5 and §8".
DOC_REFERENCE = re.compile(
    r"\bdocs/(?P<name>[A-Za-z0-9_.-]+)\.md\s+"
    rf"(?P<sections>{SECTION}\d+(?:(?:,\s*|\s+and\s+){SECTION}\d+)*)"
)
SECTION_NUMBER = re.compile(rf"{SECTION}(\d+)")
HEADING = re.compile(r"^## (\d+)\.", re.MULTILINE)


def tracked_text_files() -> Iterator[tuple[str, str]]:
    """(path, text) of every tracked file that is text; binary and missing files are skipped."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")
    for path in filter(None, listing.split("\0")):
        try:
            data = (ROOT / path).read_bytes()
        except (FileNotFoundError, IsADirectoryError):  # deleted in the working tree, a submodule
            continue
        if b"\0" in data[:8192]:
            continue
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def outside_references(text: str) -> list[tuple[int, str]]:
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(0))
        for match in OUTSIDE_REFERENCES.finditer(text)
    ]


def doc_references(text: str) -> list[tuple[int, str, int]]:
    """(line, doc name, section) of every citation in `text`."""
    out = []
    for match in DOC_REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        for number in SECTION_NUMBER.findall(match.group("sections")):
            out.append((line, match.group("name"), int(number)))
    return out


def headings(doc: Path) -> set[int]:
    return {int(n) for n in HEADING.findall(doc.read_text(encoding="utf-8"))}


def broken_references(files: list[tuple[str, str]], docs_dir: Path) -> list[str]:
    problems = []
    cache: dict[str, set[int] | None] = {}
    for path, text in files:
        for line, name, section in doc_references(text):
            if name not in cache:
                doc = docs_dir / f"{name}.md"
                cache[name] = headings(doc) if doc.is_file() else None
            found = cache[name]
            if found is None:
                problems.append(f"{path}:{line}: docs/{name}.md does not exist")
            elif section not in found:
                problems.append(f"{path}:{line}: docs/{name}.md has no '## {section}.' heading")
    return problems


def test_no_tracked_file_cites_documents_outside_the_repository() -> None:
    problems = [
        f"{path}:{line}: {found!r}"
        for path, text in tracked_text_files()
        for line, found in outside_references(text)
    ]
    assert not problems, "cite docs/<name>.md sections instead:\n" + "\n".join(problems)


def test_every_docs_citation_names_an_existing_section() -> None:
    files = list(tracked_text_files())
    assert any(doc_references(text) for _, text in files), "no citations found: is the pattern stale?"
    problems = broken_references(files, ROOT / "docs")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_bad_references(tmp_path: Path) -> None:
    """Both scanners flag what they exist for, so a pattern that drifts cannot pass silently."""
    assert outside_references(f"see {_DESIGN} {SECTION}3 and {_WIRE_NOTE}.md")
    assert outside_references(f"read /work/{_SHARED}notes.md first")
    assert outside_references(f"as the wire doc {SECTION}4 says")
    assert not outside_references("the shared backbone, shared: gw_tls, design choices")

    (tmp_path / "guide.md").write_text("# Guide\n\n## 1. One\n\n## 2. Two\n", encoding="utf-8")
    good = f"docs/guide.md {SECTION}1, {SECTION}2 and docs/guide.md {SECTION}2 step 5"
    assert broken_references([("good.py", good)], tmp_path) == []
    bad = f"docs/guide.md {SECTION}1 and {SECTION}3\ndocs/missing.md {SECTION}1"
    assert broken_references([("bad.py", bad)], tmp_path) == [
        "bad.py:1: docs/guide.md has no '## 3.' heading",
        "bad.py:2: docs/missing.md does not exist",
    ]
