"""The trainer's settings, how a job's config becomes training options, what a failure tells the cloud,
and how `make run` wires the trainer to the local cloud's token."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest

from cloud.app.settings import CloudSettings
from common.wire.device_api import AccountMe, Role, UserGroup
from common.wire.training_jobs import LeaseRequest
from launcher.local import LocalLayout, local_services
from launcher.services import CLOUD_API, TRAINER
from training.from_export import TrainingError
from training.service.client import CloudCallError, CloudClient
from training.service.job import JobError, job_options, public_error
from training.service.loop import TrainerService
from training.service.settings import TrainerSettings, default_owner


def test_empty_variables_keep_the_defaults_and_the_token_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "trainer-token"
    monkeypatch.setenv("TRAINER_API_TOKEN", "")
    monkeypatch.setenv("TRAINER_API_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("TRAINER_THREADS", "")
    monkeypatch.setenv("TRAINER_CLOUD_URL", "http://cloud.example:8000/")
    settings = TrainerSettings()
    assert settings.threads is None and settings.device == "auto"
    assert settings.cloud_url == "http://cloud.example:8000"
    assert settings.token() == ""
    token_file.write_text("io_first\n")
    assert settings.token() == "io_first"
    token_file.write_text("io_rotated\n")
    assert settings.token() == "io_rotated"
    monkeypatch.setenv("TRAINER_API_TOKEN", "io_from_the_environment")
    assert TrainerSettings().token() == "io_from_the_environment"


def test_heartbeats_come_several_times_per_lease() -> None:
    assert TrainerSettings(lease_s=120).heartbeat_interval_s == 30
    assert TrainerSettings(lease_s=2).heartbeat_interval_s == 0.5
    assert TrainerSettings(lease_s=2, heartbeat_s=0.2).heartbeat_interval_s == 0.2


def test_the_default_owner_is_a_lease_owner_the_cloud_accepts() -> None:
    owner = default_owner()
    assert owner.startswith("trainer-") and owner.endswith(str(os.getpid()))
    assert LeaseRequest(owner=owner).owner == owner
    with pytest.raises(ValueError):
        TrainerSettings(owner="no spaces allowed")


def test_make_run_gives_the_trainer_the_local_cloud_and_the_token_file_it_writes(tmp_path: Path) -> None:
    for environ in ({}, {"CLOUD_PORT": "19123"}):
        services = local_services(LocalLayout(repo_root=tmp_path), environ)
        cloud, trainer = services[CLOUD_API], services[TRAINER]
        cloud_settings = CloudSettings(data_dir=Path(cloud.env["CLOUD_DATA_DIR"]))
        assert trainer.env["TRAINER_CLOUD_URL"] == f"http://127.0.0.1:{cloud.port}"
        assert trainer.env["TRAINER_API_TOKEN_FILE"] == str(cloud_settings.trainer_token_path)
        assert trainer.env["TRAINER_WORK_DIR"].startswith(str(tmp_path / ".intellioptics"))
        assert trainer.port is None and trainer.health_url is None


def test_a_job_config_wins_over_the_trainer_defaults() -> None:
    settings = TrainerSettings(device="cpu", threads=2)
    assert (job_options({}, settings).device, job_options({}, settings).threads) == ("cpu", 2)
    options = job_options({"threads": 1, "epochs": 3}, settings)
    assert (options.device, options.threads, options.epochs) == ("cpu", 1, 3)
    assert job_options({}, TrainerSettings()).threads is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"epochs": 0}, "invalid training config: epochs: "),
        ({"learning_rat": 0.1}, "invalid training config: learning_rat: "),
        (
            {"pretrained_checkpoint": "/etc/passwd"},
            "pretrained_checkpoint is only accepted by the command line",
        ),
    ],
)
def test_an_invalid_job_config_is_a_short_clear_error(config: dict[str, object], message: str) -> None:
    with pytest.raises(JobError) as caught:
        job_options(config, TrainerSettings(device="cpu"))
    assert str(caught.value).startswith(message) or message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_cloud_learns_what_went_wrong_but_never_a_trace_or_internals() -> None:
    assert public_error(TrainingError("not enough labelled images")) == "not enough labelled images"
    hidden = public_error(KeyError("/srv/secret/path"))
    assert "KeyError" in hidden and "/srv/secret" not in hidden and "Traceback" not in hidden
    assert len(public_error(JobError("x" * 5000))) <= 1000


def trainer_me() -> AccountMe:
    return AccountMe(
        email="trainer@intellioptics.local",
        username="trainer",
        group=UserGroup(id=1, name="intellioptics"),
        role=Role.TRAINER,
    )


class Cloud:
    """Answers the trainer's whoami as a cloud would, as told."""

    def __init__(self, me: AccountMe | Exception) -> None:
        self.me = me

    def whoami(self) -> AccountMe:
        if isinstance(self.me, Exception):
            raise self.me
        return self.me


def test_the_trainer_says_it_is_ready_once_on_a_clean_start_and_again_after_a_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = TrainerSettings(api_token="io_trainer_token_for_tests")
    cloud = Cloud(trainer_me())
    service = TrainerService(settings, client=cloud)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="training.service"):
        assert service.ready()
        service._ready_until = 0.0  # the next poll checks again
        assert service.ready()
        cloud.me = CloudCallError("cloud answered 503")
        service._ready_until = 0.0
        assert not service.ready()
        cloud.me = trainer_me()
        assert service.ready()
    said = [r.getMessage() for r in caplog.records]
    assert said.count("ready: leasing training jobs") == 2
    assert len([m for m in said if m.startswith("cannot use the cloud")]) == 1


def test_a_malformed_cloud_answer_is_a_short_cloud_error() -> None:
    answers = {
        "/api/v1/exports/exp_1": httpx.Response(200, json={"id": "exp_1", "status": "sideways"}),
        "/device-api/v1/me": httpx.Response(200, content=b"<html>not json</html>"),
    }
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    client = CloudClient("http://cloud.test", lambda: "token", transport=transport)
    for call in (lambda: client.get_export("exp_1"), client.whoami):
        with pytest.raises(CloudCallError) as raised:
            call()
        assert raised.value.status == 200 and not raised.value.unreachable
        assert "the cloud's answer does not parse as" in str(raised.value) and len(str(raised.value)) < 300
