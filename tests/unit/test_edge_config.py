from __future__ import annotations

import pytest

from common.edge_config import EdgeConfigError, parse_edge_config

DET = "det_" + "B" * 27


def test_empty_config_is_valid_and_has_presets() -> None:
    cfg = parse_edge_config({})
    assert set(cfg.edge_inference_configs) >= {
        "default",
        "edge_answers_with_escalation",
        "no_cloud",
        "disabled",
    }
    assert cfg.global_config.refresh_rate == 60


def test_sdk_put_body_is_accepted() -> None:
    body = {
        "edge_inference_configs": {
            "default": {
                "enabled": True,
                "always_return_edge_prediction": False,
                "disable_cloud_escalation": False,
                "min_time_between_escalations": 30.0,
            }
        },
        "detectors": [{"detector_id": DET, "edge_inference_config": "default"}],
        "global_config": {"refresh_rate": 60.0, "confident_audit_rate": 1e-05},
    }
    cfg = parse_edge_config(body)
    det = cfg.detector(DET)
    assert det is not None and cfg.inference_config(det).min_time_between_escalations == 30.0


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"detectors": [{"detector_id": "det_bad"}]}, "detectors.0.detector_id"),
        ({"global_config": {"refresh_rate": 0}}, "global_config.refresh_rate"),
        ({"global_config": {"confident_audit_rate": 2}}, "global_config.confident_audit_rate"),
        ({"edge_inference_configs": {"x": {"disable_cloud_escalation": True}}}, "edge_inference_configs.x"),
        (
            {"detectors": [{"detector_id": DET, "confidence_threshold": 1.2}]},
            "detectors.0.confidence_threshold",
        ),
    ],
)
def test_invalid_fields_are_reported_by_path(data: dict[str, object], path: str) -> None:
    with pytest.raises(EdgeConfigError) as e:
        parse_edge_config(data)
    assert any(err.startswith(path) for err in e.value.errors), e.value.errors


def test_duplicate_detectors_and_undefined_presets_are_rejected() -> None:
    with pytest.raises(EdgeConfigError, match="listed twice"):
        parse_edge_config({"detectors": [{"detector_id": DET}, {"detector_id": DET}]})
    with pytest.raises(EdgeConfigError, match="undefined"):
        parse_edge_config({"detectors": [{"detector_id": DET, "edge_inference_config": "nope"}]})


def test_applied_config_is_kept_apart_from_the_operator_file_and_the_newer_wins(tmp_path) -> None:
    import os

    from edge.api.core.config_store import ConfigStore

    path = tmp_path / "edge-config.yaml"
    path.write_text("# operator's comments\nglobal_config:\n  refresh_rate: 30\n")
    store = ConfigStore(path, tmp_path / "data")
    assert store.config.global_config.refresh_rate == 30
    store.apply({"global_config": {"refresh_rate": 45}})
    assert path.read_text().startswith("# operator's comments")
    assert ConfigStore(path, tmp_path / "data").config.global_config.refresh_rate == 45
    later = store.applied_path.stat().st_mtime + 10
    path.write_text("global_config:\n  refresh_rate: 20\n")
    os.utime(path, (later, later))
    assert ConfigStore(path, tmp_path / "data").config.global_config.refresh_rate == 20


def test_a_config_without_streams_keeps_the_streams_of_detectors_it_still_configures(tmp_path) -> None:
    """The SDK's apply_config never sends `streams`; applying detectors must not stop the cameras."""
    from common.ids import new_detector_id
    from edge.api.core.config_store import ConfigStore

    other = new_detector_id()
    store = ConfigStore(tmp_path / "absent.yaml", tmp_path / "data")
    store.apply(
        {
            "detectors": [{"detector_id": DET}, {"detector_id": other}],
            "streams": [
                {"name": "gate", "url": "rtsp://127.0.0.1:1/gate", "detector_id": DET, "fps": 2},
                {"name": "dock", "url": "rtsp://127.0.0.1:1/dock", "detector_id": other, "fps": 2},
            ],
        }
    )
    kept = store.apply({"detectors": [{"detector_id": DET}], "global_config": {"refresh_rate": 30}})
    assert [s.name for s in kept.streams] == ["gate"]
    assert store.apply({"detectors": [{"detector_id": DET}], "streams": []}).streams == []
