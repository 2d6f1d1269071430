"""Blocking disk work of the updater on the model root it shares with inference (run in a thread).

Installs go through common.bundle: unpack into a private temp dir, verify every sha256, copy into a
staging dir, rename into place, repoint `current` atomically, keep the `keep` newest versions. A
rollback to a version still on disk re-verifies it and only repoints `current`. Inference reads the
same tree and never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from common.bundle import (
    CURRENT_LINK,
    VERSION_RE,
    BundleError,
    current_bundle_dir,
    install_bundle,
    list_detectors,
)
from common.bundle_archive import unpacked_bundle
from common.ids import is_detector_id

DOWNLOAD_PREFIX = ".download-"
UNPACK_PREFIX = ".unpack-"


class Installer:
    def __init__(self, model_root: Path, keep: int = 2) -> None:
        self.model_root = model_root
        self.keep = keep

    def _detector_dir(self, detector_id: str) -> Path:
        if not is_detector_id(detector_id):
            raise ValueError(f"detector_id {detector_id!r} is not det_ + 27 base62 characters")
        return self.model_root / detector_id

    def _version_dir(self, detector_id: str, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise BundleError(f"version {version!r} is not a safe version id")
        return self._detector_dir(detector_id) / version

    def current_version(self, detector_id: str) -> str | None:
        bundle = current_bundle_dir(self.model_root, detector_id)
        return bundle.name if bundle is not None else None

    def deployed_versions(self) -> dict[str, str]:
        """Detector id -> the version `current` names, for every detector in the model root."""
        out = {}
        for detector_id in list_detectors(self.model_root):
            version = self.current_version(detector_id)
            if version is not None:
                out[detector_id] = version
        return out

    def has_version(self, detector_id: str, version: str) -> bool:
        return VERSION_RE.match(version) is not None and self._version_dir(detector_id, version).is_dir()

    def other_version(self, detector_id: str, exclude: str) -> str | None:
        """The newest version on disk other than `exclude`: what to fall back to."""
        det_dir = self._detector_dir(detector_id)
        if not det_dir.is_dir():
            return None
        kept = [
            p
            for p in det_dir.iterdir()
            if p.is_dir() and not p.is_symlink() and VERSION_RE.match(p.name) and p.name != exclude
        ]
        return max(kept, key=lambda p: p.stat().st_mtime).name if kept else None

    def new_download_path(self) -> Path:
        """An empty private file in the model root (same filesystem as the install)."""
        self.model_root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=".tar.gz", dir=self.model_root)
        os.close(fd)
        return Path(name)

    def install_archive(self, archive: Path, detector_id: str, version: str) -> Path:
        """Unpack, verify and install atomically; the archive must hold exactly this detector and version."""
        self._version_dir(detector_id, version)  # both ids are safe before anything touches the disk
        with unpacked_bundle(archive, work_dir=self.model_root) as (bundle_dir, manifest):
            if (manifest.detector_id, manifest.version) != (detector_id, version):
                raise BundleError(
                    f"archive holds {manifest.detector_id} {manifest.version}, "
                    f"the cloud announced {detector_id} {version}"
                )
            return install_bundle(bundle_dir, self.model_root, keep=self.keep)

    def activate(self, detector_id: str, version: str) -> Path:
        """Point `current` at a version already on disk, after verifying it again."""
        return install_bundle(self._version_dir(detector_id, version), self.model_root, keep=self.keep)

    def remove_version(self, detector_id: str, version: str) -> None:
        """Delete a version that `current` does not name."""
        if self.current_version(detector_id) == version:
            raise BundleError(f"{detector_id} {version} is the current version")
        shutil.rmtree(self._version_dir(detector_id, version), ignore_errors=True)

    def reject(self, detector_id: str, bad: str, previous: str | None) -> str | None:
        """Undo a version that must not serve: `current` back to `previous` (or to nothing when there is
        no intact previous version), then delete it. Returns what `current` names afterwards."""
        if self.current_version(detector_id) == bad:
            restored = False
            if previous is not None and self.has_version(detector_id, previous):
                try:
                    self.activate(detector_id, previous)
                    restored = True
                except BundleError:
                    pass
            if not restored:
                with contextlib.suppress(FileNotFoundError):
                    (self._detector_dir(detector_id) / CURRENT_LINK).unlink()
        shutil.rmtree(self._version_dir(detector_id, bad), ignore_errors=True)
        return self.current_version(detector_id)

    def clean_leftovers(self) -> None:
        """Remove temp files an interrupted download or unpack left in the model root."""
        if not self.model_root.is_dir():
            return
        for path in self.model_root.iterdir():
            if path.name.startswith(DOWNLOAD_PREFIX) and path.is_file():
                path.unlink(missing_ok=True)
            elif path.name.startswith(UNPACK_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
