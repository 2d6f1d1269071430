"""The trainer's main loop: make sure the credentials can do the job, lease, run, repeat.

The process never exits on its own for a problem it can wait out (no token yet, the cloud down, a token
whose role may not run training jobs, torch missing): it logs what is wrong once, keeps checking every `poll_s`, and
leases nothing until it could finish what it leases. SIGTERM or SIGINT stops it; a job in progress is
handed back (its lease expires at once) so another trainer picks it up.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
import time
from types import FrameType

from common.wire.device_api import Role
from training.service.client import CloudCallError, CloudClient
from training.service.settings import TrainerSettings

log = logging.getLogger("training.service")

# After an error talking to the cloud, wait this much longer each time, up to this cap.
MAX_BACKOFF_S = 60.0
# Credentials found good are checked again after this long (or at once after a failed lease).
RECHECK_CREDENTIALS_S = 60.0
# Cloud roles whose tokens may lease, report and upload (the `trainer` service account's, or an admin's).
TRAINING_ROLES = frozenset({Role.TRAINER, Role.ADMIN})


class TrainerService:
    def __init__(self, settings: TrainerSettings, client: CloudClient | None = None) -> None:
        self.settings = settings
        self.client = client or CloudClient(settings.cloud_url, settings.token, settings.http_timeout_s)
        self.stop = threading.Event()
        self.jobs_run = 0
        # What was last said about being able to work: None until the first check says anything.
        self._problem: str | None = None
        self._ready_until = 0.0

    def _note(self, problem: str) -> None:
        """Log a problem when it changes, not on every poll; "" is "ready", said once per recovery."""
        if problem != self._problem:
            self._problem = problem
            if problem:
                log.error(problem)
            else:
                log.info("ready: leasing training jobs", extra={"fields": {"owner": self.settings.owner}})

    def ready(self) -> bool:
        """A token that the cloud accepts and whose role may run training jobs."""
        if time.monotonic() < self._ready_until:
            return True
        if not self.settings.token():
            self._note(
                f"no API token ({self.settings.token_source()}): set TRAINER_API_TOKEN or "
                "TRAINER_API_TOKEN_FILE to a trainer-role token (the cloud's `trainer` service account)"
            )
            return False
        try:
            me = self.client.whoami()
        except CloudCallError as exc:
            self._note(f"cannot use the cloud at {self.settings.cloud_url}: {exc}")
            return False
        if me.role not in TRAINING_ROLES:
            self._note(
                f"the API token belongs to {me.username!r} (role {me.role}), which may "
                "not run training jobs; give it the `trainer` service account's token"
            )
            return False
        self._note("")
        self._ready_until = time.monotonic() + RECHECK_CREDENTIALS_S
        return True

    def run(self) -> int:
        settings = self.settings
        log.info(
            "trainer started",
            extra={
                "fields": {
                    "owner": settings.owner,
                    "cloud_url": settings.cloud_url,
                    "device": settings.device,
                    "lease_s": settings.lease_s,
                    "work_dir": str(settings.work_dir),
                }
            },
        )
        if importlib.util.find_spec("torch") is None:
            log.error("torch is not installed: this trainer cannot train (pip install -e '.[training]')")
            self.stop.wait()
            return 0
        from training.service.job import JobRun, remove_stale_work_dirs  # imports torch

        stale = remove_stale_work_dirs(settings.work_dir)
        if stale:
            log.info(
                "removed the scratch space of jobs whose trainer died", extra={"fields": {"dirs": stale}}
            )

        backoff = settings.poll_s
        while not self.stop.is_set():
            if not self.ready():
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            try:
                job = self.client.lease(settings.owner, settings.lease_s)
            except CloudCallError as exc:
                log.warning("lease failed", extra={"fields": {"error": str(exc)}})
                self._problem, self._ready_until = "lease failed", 0.0  # check the credentials again
                self.stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            backoff = settings.poll_s
            if job is None:
                self.stop.wait(settings.poll_s)
                continue
            log.info("job leased", extra={"fields": {"job_id": job.id, "detector_id": job.detector_id}})
            outcome = JobRun(self.client, settings, job, self.stop).run()
            self.jobs_run += 1
            log.info(
                "job ended",
                extra={
                    "fields": {
                        "job_id": outcome.job_id,
                        "ending": outcome.ending,
                        "model_id": outcome.model_id,
                        "version": outcome.version,
                        "promoted": outcome.promoted,
                        "error": outcome.error,
                    }
                },
            )
        log.info("trainer stopped", extra={"fields": {"owner": settings.owner, "jobs": self.jobs_run}})
        self.client.close()
        return 0

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)


def main() -> int:
    from common.http import configure_logging

    settings = TrainerSettings()
    configure_logging(settings.log_level)
    if settings.nice:
        # Training takes every core it is given; the API, review pages and the edge sharing a small
        # machine must still answer at once, so the trainer yields the CPU to them.
        os.nice(settings.nice)
    service = TrainerService(settings)
    service.install_signal_handlers()
    return service.run()
