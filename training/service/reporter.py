"""What the cloud hears about the job a trainer holds: progress, log lines and lease renewal.

A background thread heartbeats every `interval_s` whatever the trainer is doing (waiting for the
export, calibrating, uploading), so the lease never lapses while the process lives. Training also
heartbeats at the end of each epoch, so the page's curves move and a cancel is seen at the next epoch
boundary (epochs shorter than EPOCH_BEAT_MIN_S share one heartbeat: then it takes that long). The answer to a heartbeat says whether a cancel was
requested; `check()` turns that (or a lost lease, or the trainer stopping) into an exception, which
the trainer's progress callback raises to stop training.

The progress dict the cloud stores (it replaces the previous one on every heartbeat):
    stage, message                 where the job is: export, download, prepare, train, calibrate,
                                   evaluate, write, register, promote, done (or failed, cancelled)
    epoch, epochs                  epochs completed, and the most that will run
    train_loss, train_accuracy, val_loss, val_accuracy, learning_rate    of the latest epoch
    history                        [{epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr}]
    eta_s, elapsed_s               training's estimate of the time left, and time since the lease
    trainer, device, export_id, model_id, version, promoted, updated_at
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from common.clock import utc_stamp as _utc_now
from training.service.client import CloudCallError, CloudClient, LeaseLost

if TYPE_CHECKING:
    from training.from_export import TrainingProgress

log = logging.getLogger("training.service")

# Training heartbeats at most this often (tiny detectors run many epochs a second).
EPOCH_BEAT_MIN_S = 0.25
# The cloud takes at most 1000 log lines of at most 4000 characters per heartbeat.
MAX_LINES_PER_BEAT = 1000
MAX_LINE_CHARS = 4000
MAX_PENDING_LINES = 5000
# Released leases expire at once, so another trainer can take the job without waiting.
RELEASE_LEASE_S = 0.001
# A heartbeat in flight when the job ends is waited for this long (the HTTP timeout bounds it anyway).
JOIN_TIMEOUT_S = 120.0


class JobCancelled(Exception):
    """An administrator cancelled the job."""


class TrainerStopping(Exception):
    """This trainer is shutting down; the job goes back to the queue."""


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


class JobReporter:
    def __init__(
        self,
        client: CloudClient,
        job_id: str,
        owner: str,
        lease_s: float,
        interval_s: float,
        stopping: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.owner = owner
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.stopping = stopping or threading.Event()
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._progress: dict[str, Any] = {"trainer": owner}
        self._history: list[dict[str, Any]] = []
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_LINES)
        self._t0 = time.monotonic()
        self._last_sent = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the background beat -----------------------------------------------------------------------

    def start(self) -> JobReporter:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            if time.monotonic() - self._last_sent >= self.interval_s * 0.5:
                self.beat()

    def stop(self) -> None:
        """Stops the background beat (call `beat()` afterwards to flush the last lines)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
            self._thread = None

    # --- what is reported ------------------------------------------------------------------------

    def log(self, message: str) -> None:
        log.info(message, extra={"fields": {"job_id": self.job_id}})
        for line in message.splitlines() or [""]:
            self._pending.append(f"{_utc_now()} [{self.owner}] {line}"[:MAX_LINE_CHARS])

    def update(self, **fields: Any) -> None:
        """Sets progress fields (None removes one) and logs a stage change."""
        with self._state_lock:
            for key, value in fields.items():
                if value is None:
                    self._progress.pop(key, None)
                else:
                    self._progress[key] = value

    def stage(self, stage: str, message: str, *, check: bool = True) -> None:
        """A new stage of the job: logged and reported at once; raises if the job must stop."""
        self.update(stage=stage, message=message)
        self.log(f"[{stage}] {message}")
        self.beat()
        if check:
            self.check()

    def on_training_progress(self, p: TrainingProgress) -> None:
        """The progress callback of `train_from_export`: records, reports, and stops when asked to."""
        epoch_done = p.stage == "train" and p.epoch is not None and p.epoch > 0 and p.train_loss is not None
        with self._state_lock:
            previous_stage = self._progress.get("stage")
            self._progress.update(
                {
                    "stage": p.stage,
                    "message": p.message,
                    "epoch": p.epoch if p.epoch is not None else self._progress.get("epoch"),
                    "epochs": p.epochs if p.epochs is not None else self._progress.get("epochs"),
                }
            )
            if epoch_done:
                entry = {
                    "epoch": p.epoch,
                    "train_loss": _round(p.train_loss),
                    "train_accuracy": _round(p.train_accuracy),
                    "val_loss": _round(p.val_loss),
                    "val_accuracy": _round(p.val_accuracy),
                    "lr": _round(p.learning_rate, 8),
                }
                self._history = [h for h in self._history if h["epoch"] != p.epoch] + [entry]
                self._progress.update({k: v for k, v in entry.items() if k not in ("epoch", "lr")})
                self._progress["learning_rate"] = entry["lr"]
                self._progress["eta_s"] = _round(p.eta_s, 1)
        if epoch_done:
            self.log(
                f"[train] epoch {p.epoch}/{p.epochs} loss {p.train_loss:.4f} acc {p.train_accuracy or 0:.4f}"
                f" | val {p.val_loss or 0:.4f} / {p.val_accuracy or 0:.4f}"
            )
        elif p.stage != "train" or previous_stage != "train":
            self.log(f"[{p.stage}] {p.message}")
        if not epoch_done or time.monotonic() - self._last_sent >= EPOCH_BEAT_MIN_S:
            self.beat()
        self.check()

    def snapshot(self) -> dict[str, Any]:
        with self._state_lock:
            progress = dict(self._progress)
            progress["history"] = list(self._history)
        progress["elapsed_s"] = round(time.monotonic() - self._t0, 1)
        progress["updated_at"] = _utc_now()
        return {k: v for k, v in progress.items() if v is not None}

    # --- talking to the cloud ----------------------------------------------------------------------

    def beat(self, lease_s: float | None = None) -> bool:
        """One heartbeat with the current progress and the pending log lines; False if it failed."""
        if self.lease_lost.is_set():
            return False
        with self._send_lock:
            lines = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_LINES_PER_BEAT))]
            try:
                ack = self.client.heartbeat(
                    self.job_id, self.owner, self.snapshot(), lines, lease_s or self.lease_s
                )
            except LeaseLost as exc:
                self.lease_lost.set()
                log.warning("lease lost", extra={"fields": {"job_id": self.job_id, "detail": exc.detail}})
                return False
            except CloudCallError as exc:
                self._pending.extendleft(reversed(lines))
                log.warning("heartbeat failed", extra={"fields": {"job_id": self.job_id, "error": str(exc)}})
                return False
            self._last_sent = time.monotonic()
        if ack.cancel_requested:
            self.cancel_requested.set()
        return True

    def release(self, reason: str) -> None:
        """Hands the job back: the last lines, and a lease that expires at once."""
        self.log(f"releasing the job: {reason}")
        self.beat(lease_s=RELEASE_LEASE_S)

    def check(self) -> None:
        """Raises when the job must stop: LeaseLost, JobCancelled or TrainerStopping."""
        if self.lease_lost.is_set():
            raise LeaseLost("the lease on this job is gone (another trainer has it, or it ended)", 409)
        if self.cancel_requested.is_set():
            raise JobCancelled("cancel requested")
        if self.stopping.is_set():
            raise TrainerStopping("the trainer is stopping")
