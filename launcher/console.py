"""What `make run` shows: one readable line per event of a service, and every line kept as JSON.

The services log one JSON object a line (common.http.JsonLineFormatter: `ts`, `level`, `logger`,
`msg` and the record's fields). `describe` turns one such line into an `Entry`: a short text and a
level, where `debug` marks what a person watching the console does not need to see: one line per
request (`*.access`), the HTTP client's line per call (`httpx`: the trainer's lease poll, the updater's
model poll, health checks), uvicorn's start-up chatter, and the training steps the trainer reports
again with its job id. Lines that are not JSON (nginx, tracebacks, the cloud's first-start accounts)
pass through as they are. `render` formats an entry as `HH:MM:SS service  text`, or gives None for a
debug entry unless verbose.

`Console` is where the launcher sends every line: each child's line goes into
`<log dir>/<service>.jsonl` as it is (a line that is not JSON is wrapped into a record), and to the
console either rendered ("readable") or unchanged behind the service's name ("json": docker
compose's view, what the launcher printed before). The launcher's own messages go to `launcher.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TextIO

from launcher.services import TRAINER

Level = Literal["debug", "info", "warning", "error"]
ConsoleMode = Literal["readable", "json"]
LineSink = Callable[[str], None]

LAUNCHER = "launcher"
DEFAULT_WIDTH = 15
LOG_SUFFIX = ".jsonl"
# Each service's file is rotated at this size; this many older ones are kept (<service>.jsonl.1, ...).
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 2
# A field's value is cut to this many characters on the console (the JSON file keeps all of it).
MAX_VALUE_CHARS = 160

_LEVELS: Mapping[str, Level] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "critical": "error",
    "fatal": "error",
}
# Keys of a record that are not fields of its event.
_RECORD_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "service"})
# Steps of a training run that the trainer logs again, with its job id (training.service.reporter).
_TRAINING_STEPS = frozenset({"training.from_export", "training.head_trainer", "training.detection.train"})
_REVIEW_ANSWER = re.compile(r"^/api/v1/review/items/(?P<item>[^/]+)/answer$")
_HTTPX_REQUEST = re.compile(r'^HTTP Request: (?P<method>\S+) (?P<url>\S+) "HTTP/[\d.]+ (?P<status>.*)"$')
_MIGRATION = re.compile(r"^Running upgrade (?P<source>\S*) -> (?P<target>\S+), (?P<what>.*)$")
# How the lines that are not JSON say they are warnings or errors (nginx, Python's default format).
_RAW_ERROR = re.compile(r"\[(?:emerg|alert|crit|error)\]|\b(?:ERROR|CRITICAL)\b|^Traceback \(most recent")
_RAW_WARNING = re.compile(r"\[warn\]|\bWARNING\b")

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_LEVEL_COLOURS: Mapping[Level, str] = {"debug": _DIM, "warning": "\x1b[33m", "error": "\x1b[31m"}
_NAME_COLOURS = (
    "\x1b[36m",
    "\x1b[32m",
    "\x1b[35m",
    "\x1b[34m",
    "\x1b[96m",
    "\x1b[92m",
    "\x1b[95m",
    "\x1b[94m",
)


@dataclass(frozen=True)
class Entry:
    """One line of a service as the console shows it."""

    level: Level
    text: str
    # When it happened (the record's `ts`); None: when it was read.
    ts: float | None = None


def parse_record(line: str) -> dict[str, Any] | None:
    """The JSON log record on this line, or None when it is not one."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("msg"), str):
        return None
    return record


def _short(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_short(item) for item in value)
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _fields(record: Mapping[str, Any]) -> str:
    """` (key=value, ...)` of the record's own fields, or nothing when it has none."""
    parts = [f"{k}={_short(v)}" for k, v in record.items() if k not in _RECORD_KEYS and v is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _words(reason: Any) -> str:
    return str(reason).replace("_", " ")


def _ms(value: Any) -> str:
    return f"{value:g} ms" if isinstance(value, int | float) else "? ms"


def _access(record: Mapping[str, Any], ts: float | None) -> Entry:
    """One request a service answered: only the notable ones are more than debug."""
    method, path, status = record.get("method"), str(record.get("path")), record.get("status")
    text = f"{method} {path} -> {status} in {_ms(record.get('ms'))}"
    if isinstance(status, int) and status >= 500:
        return Entry("error", f"{text} (request {record.get('request_id')})", ts)
    answered = _REVIEW_ANSWER.match(path)
    if answered and method == "POST" and status == 200:
        return Entry("info", f"review item {answered['item']} answered by a person", ts)
    return Entry("debug", text, ts)


def _job_ended(record: Mapping[str, Any]) -> tuple[Level, str]:
    job, ending = record.get("job_id"), record.get("ending")
    if ending == "succeeded":
        what = "promoted to production" if record.get("promoted") else "registered as a candidate"
        return "info", f"training job {job} finished: model {record.get('version')} {what}"
    error = record.get("error")
    return ("info" if ending == "released" else "warning"), f"training job {job} {ending}" + (
        f": {_short(error)}" if error else ""
    )


# Events whose record reads better in words of their own than as `msg (fields)`: msg -> text.
_EVENTS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    # cloud-api
    "escalation received": lambda r: (
        f"escalated {r.get('image_query_id')} for review ({_words(r.get('reason'))}; "
        f"detector {r.get('detector_id')}" + (f", edge {r['edge_id']})" if r.get("edge_id") else ")")
    ),
    "model registered": lambda r: (
        f"model {r.get('version')} of {r.get('detector_id')} registered"
        + (" and promoted to production" if r.get("promoted") else " as a candidate")
    ),
    "model promoted": lambda r: f"model {r.get('model_id')} of {r.get('detector_id')} promoted to production",
    "model rolled back": lambda r: (
        f"{r.get('detector_id')} rolled back from {r.get('from')} to {r.get('to')}"
    ),
    # edge-api
    "query escalated": lambda r: (
        f"escalated {r.get('image_query_id')} ({_words(r.get('reason'))}"
        + (
            f" {r['confidence']:.2f} < {r['threshold']:.2f}"
            if isinstance(r.get("confidence"), int | float)
            and isinstance(r.get("threshold"), int | float)
            and r.get("reason") == "low_confidence"
            else ""
        )
        + f"; detector {r.get('detector_id')})"
    ),
    # cloud-worker
    "worker started": lambda r: f"looking for work every {_short(r.get('poll_s'))} s",
    "training job queued": lambda r: (
        f"training job {r.get('job_id')} queued for {r.get('detector_id')} "
        f"({_words(r.get('trigger'))}, {r.get('new_labels')} new labels)"
    ),
    # trainer
    "trainer started": lambda r: (
        f"looking for training jobs at {r.get('cloud_url')} (device {r.get('device')})"
    ),
    "job leased": lambda r: f"training job {r.get('job_id')} started for {r.get('detector_id')}",
    # updater
    "detector polled": lambda r: (
        f"watching {r.get('detector_id')} for new models (every {_short(r.get('refresh_rate_s'))} s)"
    ),
    "model deployed": lambda r: (
        f"model {r.get('version')} of {r.get('detector_id')} installed "
        f"(was {r.get('previous') or 'none'}; {r.get('source')}, loaded in {_ms(r.get('load_ms'))})"
    ),
    "model rejected; the previous version keeps serving": lambda r: (
        f"model {r.get('version')} of {r.get('detector_id')} rejected: {_short(r.get('reason'))}; "
        f"{r.get('serving') or 'nothing'} keeps serving"
    ),
    # inference
    "model swapped": lambda r: (
        f"model of {r.get('detector_id')} swapped to {r.get('version')} (was {r.get('previous') or 'none'})"
    ),
}


def _chatter(
    service: str, logger: str, msg: str, record: Mapping[str, Any], ts: float | None
) -> Entry | None:
    """Info lines of libraries and training steps: debug (or reworded), so the console shows the system."""
    calling = _HTTPX_REQUEST.match(msg) if logger == "httpx" else None
    if calling:
        return Entry("debug", f"called {calling['method']} {calling['url']} -> {calling['status']}", ts)
    if logger.startswith(("httpx", "httpcore", "uvicorn")):
        return Entry("debug", msg + _fields(record), ts)
    if logger.startswith("alembic"):
        migration = _MIGRATION.match(msg)
        if migration is None:
            return Entry("debug", msg, ts)
        return Entry("info", f"database migrated to {migration['target']} ({migration['what']})", ts)
    if service == TRAINER and logger in _TRAINING_STEPS:
        return Entry("debug", msg, ts)
    return None


def _event_text(level: Level, logger: str, msg: str, record: Mapping[str, Any]) -> tuple[Level, str]:
    """The event in words of its own where it has them, else `msg (fields)`; a job's end sets the level."""
    if msg == "job ended":
        return _job_ended(record)
    if msg in _EVENTS:
        return level, _EVENTS[msg](record)
    if logger.startswith("training.service") and record.get("job_id") and msg.startswith("["):
        # The trainer's report of a job's progress (training.service.reporter): "[stage] message".
        return level, f"training job {record['job_id']} {msg}"
    return level, msg + _fields(record)


def _event(service: str, record: Mapping[str, Any]) -> Entry:
    level = _LEVELS.get(str(record.get("level", "info")).lower(), "info")
    logger = str(record.get("logger", ""))
    msg: str = record["msg"]
    ts = record.get("ts") if isinstance(record.get("ts"), int | float) else None
    if logger.endswith(".access") and msg == "request":
        return _access(record, ts)
    if level == "info":
        chatter = _chatter(service, logger, msg, record, ts)
        if chatter is not None:
            return chatter
    level, text = _event_text(level, logger, msg, record)
    if level in ("warning", "error"):
        text = f"{level}: {text}"
    exc = record.get("exc")
    if isinstance(exc, str) and exc.strip():
        text += f" -- {exc.strip().splitlines()[-1].strip()}"
    return Entry(level, text, ts)


def _raw_level(line: str) -> Level:
    if _RAW_ERROR.search(line):
        return "error"
    return "warning" if _RAW_WARNING.search(line) else "info"


def describe(service: str, line: str) -> Entry:
    """What one line a service printed means on the console (see the module docstring)."""
    record = parse_record(line)
    if record is None:
        return Entry(_raw_level(line), line)
    return _event(service, record)


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _name_colour(service: str) -> str:
    return _NAME_COLOURS[zlib.crc32(service.encode()) % len(_NAME_COLOURS)]


def format_entry(
    service: str, entry: Entry, *, width: int = DEFAULT_WIDTH, colour: bool = False, now: float | None = None
) -> str:
    """`HH:MM:SS service  text`, coloured by level (and the name by service) when `colour`."""
    when = clock(entry.ts if entry.ts is not None else (time.time() if now is None else now))
    name = f"{service:<{width}}"
    if not colour:
        return f"{when} {name}{entry.text}"
    text_colour = _LEVEL_COLOURS.get(entry.level)
    text = f"{text_colour}{entry.text}{_RESET}" if text_colour else entry.text
    return f"{_DIM}{when}{_RESET} {_name_colour(service)}{name}{_RESET}{text}"


def render(
    service: str,
    line: str,
    *,
    verbose: bool = False,
    colour: bool = False,
    width: int = DEFAULT_WIDTH,
    now: float | None = None,
) -> str | None:
    """The console line for one line a service printed; None when it shows only with `verbose`."""
    entry = describe(service, line)
    if entry.level == "debug" and not verbose:
        return None
    return format_entry(service, entry, width=width, colour=colour, now=now)


def record_line(line: str, now: float | None = None) -> str:
    """The line as it goes into a JSON log file: a record as it is, anything else wrapped into one."""
    text = line.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            if isinstance(json.loads(text), dict):
                return text
        except ValueError:
            pass
    ts = round(time.time() if now is None else now, 3)
    return json.dumps({"ts": ts, "level": _raw_level(line), "logger": "output", "msg": line})


def wants_colour(stream: IO[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Colour only for a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if "NO_COLOR" in environ or environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class LogFile:
    """One service's JSON lines, appended across runs and rotated by size. Private (0600): the cloud
    prints its first-start accounts, and they are kept with the rest."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: TextIO | None = None
        self._size = 0

    def _open(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(fd).st_size
        return open(fd, "a", encoding="utf-8", errors="replace", buffering=1)

    def _rotate(self) -> None:
        """<name> becomes <name>.1, <name>.1 becomes <name>.2, ...; the oldest is dropped."""
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        for index in range(self.backups, 0, -1):
            newer = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            if newer.exists():
                os.replace(newer, self.path.with_name(f"{self.path.name}.{index}"))

    def write(self, line: str) -> None:
        data = line + "\n"
        size = len(data.encode("utf-8", errors="replace"))
        if self._file is None:
            self._file = self._open()
        if self._size > 0 and self._size + size > self.max_bytes:
            self._rotate()
            self._file = self._open()
        self._file.write(data)
        self._size += size

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class Console:
    """Where the launcher and its children's lines go: the console and the JSON log files.

    `stream` None means sys.stdout at the time of each line. `colour` None: only on a terminal.
    Safe to use from the threads that read the children's output.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        mode: ConsoleMode = "json",
        verbose: bool = False,
        width: int = DEFAULT_WIDTH,
        log_dir: Path | None = None,
        colour: bool | None = None,
    ) -> None:
        self.stream = stream
        self.mode = mode
        self.verbose = verbose
        self.width = width
        self.log_dir = log_dir
        self.colour = wants_colour(self.target) if colour is None else colour
        self._lock = threading.Lock()
        self._files: dict[str, LogFile] = {}
        self._broken = False

    @property
    def target(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    @property
    def readable(self) -> bool:
        return self.mode == "readable"

    def log_path(self, service: str) -> Path | None:
        return self.log_dir / f"{service}{LOG_SUFFIX}" if self.log_dir is not None else None

    def _print(self, text: str) -> None:
        """Write to the console; the caller holds the lock."""
        with contextlib.suppress(ValueError, OSError):
            self.target.write(text + "\n")
            self.target.flush()

    def _keep(self, service: str, line: str) -> None:
        """Append to the service's JSON log file; the caller holds the lock. A file that cannot be
        written is reported once, and the run goes on without files."""
        path = self.log_path(service)
        if path is None or self._broken:
            return
        log_file = self._files.get(service)
        if log_file is None:
            log_file = self._files[service] = LogFile(path)
        try:
            log_file.write(line)
        except OSError as error:
            self._broken = True
            self.close_files()
            warning = f"warning: the JSON logs are not written from now on ({error})"
            self._print(self._launcher_line(LAUNCHER, Entry("warning", warning), warning))

    def _launcher_line(self, service: str, entry: Entry, plain: str | None) -> str:
        if self.readable:
            return format_entry(service, entry, width=self.width, colour=self.colour)
        return f"{LAUNCHER:<{self.width}}| {plain if plain is not None else entry.text}"

    def child_line(self, service: str, line: str) -> None:
        """One line a child printed."""
        with self._lock:
            self._keep(service, record_line(line))
            if not self.readable:
                self._print(f"{service:<{self.width}}| {line}")
                return
            shown = render(service, line, verbose=self.verbose, colour=self.colour, width=self.width)
            if shown is not None:
                self._print(shown)

    def sink(self, service: str) -> LineSink:
        """The output callback for one child (launcher.processes.ManagedProcess's `output`)."""

        def sink(line: str) -> None:
            self.child_line(service, line)

        return sink

    def note(
        self, service: str, readable: str | None, *, plain: str | None = None, level: Level = "info"
    ) -> None:
        """A message of the launcher about `service` (or itself): `readable` is shown behind the
        service's name on the readable console, `plain` behind "launcher" on the json one (either
        None: not shown there). Both go into launcher.jsonl."""
        text = readable if readable is not None else plain
        if text is None:
            return
        with self._lock:
            fields: dict[str, Any] = {"ts": round(time.time(), 3), "level": level, "logger": LAUNCHER}
            fields["msg"] = text
            if service != LAUNCHER:
                fields["service"] = service
            self._keep(LAUNCHER, json.dumps(fields))
            shown = readable if self.readable else plain
            if shown is not None and self.readable and level in ("warning", "error"):
                shown = f"{level}: {shown}"
            if shown is not None:
                self._print(self._launcher_line(service, Entry(level, shown), shown))

    def say(self, message: str, level: Level = "info") -> None:
        """A message of the launcher itself, the same on either console."""
        self.note(LAUNCHER, message, plain=message, level=level)

    def close_files(self) -> None:
        for log_file in self._files.values():
            log_file.close()
        self._files.clear()

    def close(self) -> None:
        """Close the log files (a later line opens its file again)."""
        with self._lock:
            self.close_files()
