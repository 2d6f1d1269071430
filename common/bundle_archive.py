"""A bundle as one file on the wire: a gzipped tar of the bundle's files, flat, in name order.

The cloud registry stores bundles in this form and edges download it. Packing is deterministic (fixed
member order, times, owners and modes; no gzip timestamp), so the same bundle always packs to the same
bytes and the archive's sha256 names its content.

Unpacking trusts nothing: only regular files with plain names are accepted (no absolute paths, no
`..`, no directories, links or devices), the archive, each member, their sum and their number are
bounded, and the result counts only after `verify_bundle` has checked every sha256 of the manifest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from common.bundle import BundleError, Manifest, install_bundle, verify_bundle

ARCHIVE_SUFFIX = ".tar.gz"
ARCHIVE_CONTENT_TYPE = "application/gzip"
# Generous for ONNX models of a compact CNN; a bigger bundle needs a deliberate change here.
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 32

_MEMBER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_COPY_CHUNK = 1 << 20


class ArchiveError(BundleError):
    """The archive is unreadable, unsafe or not a bundle."""


class ArchiveTooLargeError(ArchiveError):
    """The archive, a member or their sum is over a limit."""


def pack_bundle(bundle_dir: Path, out_path: Path) -> Manifest:
    """Verify `bundle_dir`, then write its regular files (not links, not dot-files) into `out_path`."""
    manifest = verify_bundle(bundle_dir)
    names = sorted(
        p.name
        for p in bundle_dir.iterdir()
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    )
    with (
        out_path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in names:
            path = bundle_dir / name
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as src:
                tar.addfile(info, src)
    return manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Budget:
    """Counts decompressed bytes read through it: a gzip bomb stops at the limit, not at the disk."""

    def __init__(self, raw: gzip.GzipFile, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.used = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.used += len(data)
        if self.used > self.limit:
            raise ArchiveTooLargeError(f"archive expands to more than {self.limit} bytes")
        return data


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The plain file name of a member, None for the `.` entry some tar tools write; else raise."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if name in ("", "."):
        if member.isdir():
            return None
        raise ArchiveError(f"archive member {member.name!r} has no name")
    if name.startswith("/") or member.name.startswith("/"):
        raise ArchiveError(f"archive member {member.name!r} is an absolute path")
    if ".." in name.split("/"):
        raise ArchiveError(f"archive member {member.name!r} leaves the bundle directory")
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive member {member.name!r} is a link; only regular files are allowed")
    if member.isdir():
        raise ArchiveError(f"archive member {member.name!r} is a directory; a bundle archive is flat")
    if not member.isreg():
        raise ArchiveError(f"archive member {member.name!r} is not a regular file")
    if not _MEMBER_NAME_RE.match(name):
        raise ArchiveError(f"archive member {member.name!r} is not a plain file name")
    return name


def unpack_bundle(
    archive: Path,
    dest_dir: Path,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Manifest:
    """Extract `archive` into the empty directory `dest_dir` and verify it as a bundle.

    Raises ArchiveError (or ArchiveTooLargeError) for anything unsafe or unreadable and BundleError
    when the files do not make a valid bundle. `dest_dir` may hold partial files after an error.
    """
    size = archive.stat().st_size
    if size > max_archive_bytes:
        raise ArchiveTooLargeError(f"archive is {size} bytes; the limit is {max_archive_bytes}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if any(dest_dir.iterdir()):
        raise ArchiveError(f"{dest_dir} is not empty")
    seen: set[str] = set()
    total = 0
    try:
        with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            # Tar headers count too; one block of slack per allowed member covers them.
            budget = _Budget(gz, max_total_bytes + (max_members + 4) * 1024)
            with tarfile.open(fileobj=budget, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    name = _member_name(member)
                    if name is None:
                        continue
                    if len(seen) >= max_members:
                        raise ArchiveError(f"archive has more than {max_members} members")
                    if name in seen:
                        raise ArchiveError(f"archive member {name!r} appears twice")
                    if member.size > max_member_bytes:
                        raise ArchiveTooLargeError(
                            f"archive member {name!r} is {member.size} bytes; the limit is {max_member_bytes}"
                        )
                    total += member.size
                    if total > max_total_bytes:
                        raise ArchiveTooLargeError(
                            f"archive members add up to more than {max_total_bytes} bytes"
                        )
                    seen.add(name)
                    src = tar.extractfile(member)
                    if src is None:  # pragma: no cover - regular files always have a reader
                        raise ArchiveError(f"archive member {name!r} cannot be read")
                    with (dest_dir / name).open("xb") as out:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"not a readable tar.gz bundle archive: {exc}") from None
    if not seen:
        raise ArchiveError("archive is empty")
    return verify_bundle(dest_dir)


@contextlib.contextmanager
def unpacked_bundle(
    archive: Path, work_dir: Path | None = None, **limits: int
) -> Iterator[tuple[Path, Manifest]]:
    """Unpack and verify into a private temp dir, removed on exit: `(bundle_dir, manifest)`."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=work_dir))
    try:
        bundle_dir = tmp / "bundle"
        manifest = unpack_bundle(archive, bundle_dir, **limits)
        yield bundle_dir, manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install_bundle_archive(archive: Path, model_root: Path, keep: int = 2) -> Path:
    """Unpack, verify and install atomically under `model_root` (see common.bundle.install_bundle)."""
    model_root.mkdir(parents=True, exist_ok=True)
    with unpacked_bundle(archive, work_dir=model_root) as (bundle_dir, _):
        return install_bundle(bundle_dir, model_root, keep=keep)
