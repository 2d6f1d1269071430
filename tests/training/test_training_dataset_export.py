"""Dataset export: the reader/writer round trip, refusal of bad archives, and the stable split."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.bundle import DetectorMode
from training.dataset_export import (
    UNCLEAR,
    ExportDetector,
    ExportError,
    ExportSample,
    item_split,
    read_export,
    write_export,
)
from training.sample_images import encode_image

from .synthetic import detector_id, digit_detector, digit_samples

DETECTOR = ExportDetector(
    id=detector_id("TestExport"),
    name="export-test",
    query="Is the light on?",
    mode=DetectorMode.BINARY,
    labels=["YES", "NO"],
)


def _samples() -> list[ExportSample]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (12, 10)).astype(np.uint8)
    rgb = rng.integers(0, 256, (8, 9, 3)).astype(np.uint8)
    rgba = rng.integers(0, 256, (7, 7, 4)).astype(np.uint8)
    jpeg = encode_image(Image.fromarray(rgb), "JPEG")
    return [
        ExportSample("iq_gray", "YES", gray, source="HUMAN", labeled_at="2026-01-01T00:00:00Z"),
        ExportSample("iq_rgb", "NO", Image.fromarray(rgb), source="CUSTOMER"),
        ExportSample("iq_rgbd", "YES", rgba),
        ExportSample("iq_jpeg", "NO", jpeg),
        ExportSample("iq_unsure", UNCLEAR, gray),
    ]


def test_written_export_reads_back_with_the_same_items_and_pixels(tmp_path: Path) -> None:
    path = tmp_path / "export.tar.gz"
    written = write_export(path, DETECTOR, _samples(), created_at="2026-01-02T03:04:05Z")
    export = read_export(path)
    assert export.manifest == written
    assert (
        export.detector.mode is DetectorMode.BINARY and export.manifest.created_at == "2026-01-02T03:04:05Z"
    )
    items = {i.image_query_id: i for i in export.manifest.items}
    assert items["iq_jpeg"].image == "images/iq_jpeg.jpg" and items["iq_jpeg"].content_type == "image/jpeg"
    assert items["iq_gray"].image == "images/iq_gray.png" and items["iq_gray"].content_type == "image/png"
    assert items["iq_rgb"].source == "CUSTOMER" and items["iq_gray"].labeled_at == "2026-01-01T00:00:00Z"
    for sample in _samples():
        data = export.images[sample.image_query_id]
        if isinstance(sample.image, bytes):
            assert data == sample.image
        else:
            with Image.open(io.BytesIO(data)) as img:
                expected = np.asarray(sample.image)
                assert np.array_equal(np.asarray(img), expected)
    with Image.open(io.BytesIO(export.images["iq_rgbd"])) as img:
        assert img.mode == "RGBA"


def test_unclear_items_stay_in_the_export_but_are_not_trained_on(tmp_path: Path) -> None:
    write_export(tmp_path / "e.tar.gz", DETECTOR, _samples())
    export = read_export(tmp_path / "e.tar.gz")
    assert len(export.manifest.items) == 5
    assert [i.image_query_id for i in export.trainable_items()] == ["iq_gray", "iq_rgb", "iq_rgbd", "iq_jpeg"]
    snapshot = export.label_snapshot()
    assert snapshot.count == 4 and snapshot.unclear_skipped == 1
    assert snapshot.per_label == {"YES": 2, "NO": 2}
    assert sum(len(v) for v in export.splits().values()) == 4


def test_label_snapshot_hash_ignores_order_and_changes_with_any_label(tmp_path: Path) -> None:
    samples = _samples()
    write_export(tmp_path / "a.tar.gz", DETECTOR, samples)
    write_export(tmp_path / "b.tar.gz", DETECTOR, samples[::-1])
    a, b = read_export(tmp_path / "a.tar.gz"), read_export(tmp_path / "b.tar.gz")
    flipped = [
        ExportSample(s.image_query_id, "NO" if s.label == "YES" else s.label, s.image) for s in samples
    ]
    write_export(tmp_path / "c.tar.gz", DETECTOR, flipped)
    c = read_export(tmp_path / "c.tar.gz")
    assert a.label_snapshot().sha256 == b.label_snapshot().sha256
    assert c.label_snapshot().sha256 != a.label_snapshot().sha256


def test_writing_the_same_samples_twice_gives_identical_bytes(tmp_path: Path) -> None:
    write_export(tmp_path / "1.tar.gz", DETECTOR, _samples(), created_at="x")
    write_export(tmp_path / "2.tar.gz", DETECTOR, _samples(), created_at="x")
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()


def test_count_labels_given_as_numbers_are_read_as_text(tmp_path: Path) -> None:
    manifest = {
        "format_version": 1,
        "detector": {
            "id": detector_id("TestCount"),
            "name": "count",
            "query": "how many?",
            "mode": "COUNT",
            "labels": [0, 1, 2],
            "mode_configuration": {"class_name": "bolt", "max_count": 2},
        },
        "created_at": "2026-01-01T00:00:00Z",
        "items": [{"image_query_id": "iq_a", "label": 2, "image": "images/iq_a.png"}],
    }
    path = _tar(tmp_path, manifest, {"images/iq_a.png": encode_image(Image.new("L", (4, 4)), "PNG")})
    export = read_export(path)
    assert export.detector.labels == ["0", "1", "2"] and export.manifest.items[0].label == "2"


def _tar(tmp_path: Path, manifest: dict[str, object], files: dict[str, bytes], extra: bool = False) -> Path:
    path = tmp_path / "handmade.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            link = tarfile.TarInfo("images/link.png")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return path


def _manifest(**item: object) -> dict[str, object]:
    base = {"image_query_id": "iq_a", "label": "YES", "image": "images/iq_a.png"}
    return {
        "format_version": 1,
        "detector": DETECTOR.model_dump(mode="json"),
        "created_at": "",
        "items": [{**base, **item}],
    }


PNG = encode_image(Image.new("L", (4, 4)), "PNG")


@pytest.mark.parametrize(
    ("manifest", "files", "message"),
    [
        (_manifest(), {}, "missing from the archive"),
        (_manifest(image="../../etc/passwd"), {"images/iq_a.png": PNG}, "image path"),
        (_manifest(image="images/../x.png"), {"images/iq_a.png": PNG}, "image path"),
        (_manifest(label="MAYBE"), {"images/iq_a.png": PNG}, "not one of the detector's labels"),
        ({**_manifest(), "format_version": 4}, {"images/iq_a.png": PNG}, "format_version"),
        ({"format_version": 1, "items": []}, {}, "detector"),
    ],
)
def test_malformed_or_unsafe_exports_are_refused(
    tmp_path: Path, manifest: dict[str, object], files: dict[str, bytes], message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        read_export(_tar(tmp_path, manifest, files))


def test_duplicate_ids_and_missing_manifest_are_refused(tmp_path: Path) -> None:
    twice = _manifest()
    twice["items"] = [*twice["items"], *twice["items"]]  # type: ignore[misc]
    with pytest.raises(ExportError, match="appears 2 times"):
        read_export(_tar(tmp_path, twice, {"images/iq_a.png": PNG}))
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz"):
        pass
    with pytest.raises(ExportError, match=r"manifest\.json is missing"):
        read_export(bare)
    (tmp_path / "not.tar.gz").write_bytes(b"hello")
    with pytest.raises(ExportError, match="not a readable"):
        read_export(tmp_path / "not.tar.gz")


def test_links_and_unlisted_files_in_the_archive_are_ignored(tmp_path: Path) -> None:
    files = {"images/iq_a.png": PNG, "images/other.png": PNG, "notes.txt": b"hi"}
    export = read_export(_tar(tmp_path, _manifest(), files, extra=True))
    assert list(export.images) == ["iq_a"]


def test_writer_refuses_labels_the_detector_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(ExportError):
        write_export(tmp_path / "x.tar.gz", DETECTOR, [ExportSample("iq_a", "7", PNG)])
    assert not (tmp_path / "x.tar.gz").exists()


def test_item_split_is_a_pinned_function_of_the_id_alone() -> None:
    # Pinned: changing the scheme would move test items of every detector into training.
    ids = [f"iq_{i}" for i in range(12)]
    assert [item_split(i) for i in ids] == [item_split(i) for i in ids]
    assert [item_split(i) for i in ids] == [
        "train", "train", "train", "train", "train", "val", "train", "train", "train", "test", "test", "val",
    ]  # fmt: skip
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(20000):
        counts[item_split(f"iq_{i}")] += 1
    assert abs(counts["test"] / 20000 - 0.15) < 0.01 and abs(counts["val"] / 20000 - 0.15) < 0.01


def test_no_item_moves_between_splits_when_labels_are_added_or_changed(tmp_path: Path) -> None:
    first = digit_samples(300, seed=1)
    write_export(tmp_path / "v1.tar.gz", digit_detector(), first)
    # Version 2 of the dataset: 200 new items, 20 relabelled, and another order.
    later = digit_samples(500, seed=1)
    relabelled = [ExportSample(s.image_query_id, str((int(s.label) + 1) % 10), s.image) for s in later[:20]]
    second = (relabelled + later[20:])[::-1]
    write_export(tmp_path / "v2.tar.gz", digit_detector(), second)

    def split_map(path: Path) -> dict[str, str]:
        export = read_export(path)
        return {item.image_query_id: name for name, items in export.splits().items() for item in items}

    v1, v2 = split_map(tmp_path / "v1.tar.gz"), split_map(tmp_path / "v2.tar.gz")
    assert len(v1) == 300 and len(v2) == 500
    assert all(v2[k] == v for k, v in v1.items())
    assert split_map(tmp_path / "v1.tar.gz") == v1
    assert {"train", "val", "test"} == set(v1.values())
