"""Blocking disk work of the updater on the model root it shares with inference (run in a thread).

Installs go through common.bundle: unpack into a private temp dir, verify every sha256, copy into a
staging dir, rename into place, repoint `current` atomically, keep the `keep` newest versions. A
rollback to a version still on disk re-verifies it and only repoints `current`. Inference reads the
same tree and never sees a half-written version.

Shared backbones live beside the detectors (`<model_root>/backbones/<sha256>/`, common.backbone) and are
installed before the split bundles that name them. One that no kept version of any detector names any
more is removed (`remove_unreferenced_backbones`); the caller says which ones an install under way needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from common.backbone import BackboneError, BackboneStore
from common.bundle import (
    CURRENT_LINK,
    MANIFEST_FILE,
    VERSION_RE,
    BundleError,
    Manifest,
    current_bundle_dir,
    install_bundle,
    list_detectors,
    read_metadata,
)
from common.bundle_archive import unpacked_bundle
from common.ids import is_detector_id
from common.wire.updater_status import InstalledBackbone

log = logging.getLogger("updater")

DOWNLOAD_PREFIX = ".download-"
UNPACK_PREFIX = ".unpack-"


class Installer:
    def __init__(self, model_root: Path, keep: int = 2) -> None:
        self.model_root = model_root
        self.keep = keep
        self.backbones = BackboneStore.for_model_root(model_root)

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

    def new_download_path(self, suffix: str = ".tar.gz") -> Path:
        """An empty private file in the model root (same filesystem as the install)."""
        self.model_root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=suffix, dir=self.model_root)
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
            installed = install_bundle(bundle_dir, self.model_root, keep=self.keep)
        self._describe_backbone(installed)
        return installed

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
        """Remove temp files an interrupted download, unpack or backbone install left in the model root."""
        if not self.model_root.is_dir():
            return
        for path in self.model_root.iterdir():
            if path.name.startswith(DOWNLOAD_PREFIX) and path.is_file():
                path.unlink(missing_ok=True)
            elif path.name.startswith(UNPACK_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        if self.backbones.root.is_dir():
            for path in self.backbones.root.iterdir():
                if path.name.startswith(".staging-") and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name.startswith(".upload-") and path.is_file():
                    path.unlink(missing_ok=True)

    # -- shared backbones ------------------------------------------------------------------------
    def has_backbone(self, sha256: str) -> bool:
        """Installed and intact; a damaged copy counts as missing (installing it again replaces it)."""
        try:
            self.backbones.verify(sha256)
        except BackboneError:
            return False
        return True

    def install_backbone(self, src: Path, sha256: str) -> Path:
        """Install a downloaded backbone (already checked against `sha256` as it arrived) atomically."""
        path = self.backbones.install_file(src)
        if path.parent.name != sha256:
            raise BackboneError(f"backbone file hashes to {path.parent.name[:12]}, expected {sha256[:12]}")
        return path

    def _describe_backbone(self, bundle_dir: Path) -> None:
        """Keep the full BackboneRef of a split bundle beside its backbone (`backbone.json`), which the
        fetch answer alone does not carry; only names it on the status page, so failures are ignored."""
        try:
            ref = read_metadata(bundle_dir).backbone
            if ref is not None and self.backbones.info(ref.sha256) is None:
                self.backbones.install_file(self.backbones.path(ref.sha256), ref)
        except (BundleError, BackboneError, OSError) as exc:
            log.warning(
                "backbone not described", extra={"fields": {"bundle": str(bundle_dir), "error": str(exc)}}
            )

    def backbone_references(self) -> dict[str, list[str]]:
        """sha256 -> `detector_id/version` of every version on disk (any detector) that needs it.

        A version whose manifest cannot be read names nothing: it can never go live again without a
        fresh download, and that installs its backbone first."""
        refs: dict[str, list[str]] = {}
        if not self.model_root.is_dir():
            return refs
        for det_dir in self.model_root.iterdir():
            if not is_detector_id(det_dir.name) or not det_dir.is_dir():
                continue
            for version_dir in det_dir.iterdir():
                if version_dir.is_symlink() or not VERSION_RE.match(version_dir.name):
                    continue
                try:
                    manifest = Manifest.model_validate_json((version_dir / MANIFEST_FILE).read_bytes())
                except (OSError, ValidationError):
                    continue
                if manifest.backbone is not None:
                    refs.setdefault(manifest.backbone.sha256, []).append(f"{det_dir.name}/{version_dir.name}")
        return refs

    def remove_unreferenced_backbones(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete the backbones no version on disk needs, except `keep` (installs under way)."""
        referenced = self.backbone_references()
        removed = []
        for sha256 in self.backbones.list():
            if sha256 not in referenced and sha256 not in keep:
                self.backbones.remove(sha256)
                removed.append(sha256)
        return removed

    def installed_backbones(self) -> list[InstalledBackbone]:
        """The backbones in the model root, for the status page and the heartbeat."""
        referenced = self.backbone_references()
        out = []
        for sha256 in self.backbones.list():
            info = self.backbones.info(sha256)
            try:
                size: int | None = self.backbones.path(sha256).stat().st_size
            except OSError:
                size = None
            out.append(
                InstalledBackbone(
                    sha256=sha256,
                    id=info.id if info is not None else None,
                    bytes=size,
                    used_by=sorted(referenced.get(sha256, [])),
                )
            )
        return out
