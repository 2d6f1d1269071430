"""The readable console of `make run`, line by line (launcher.console), and where the lines go."""

from __future__ import annotations

import io
import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from launcher.__main__ import options_from_args, parser
from launcher.console import (
    Console,
    LogFile,
    clock,
    describe,
    format_entry,
    record_line,
    render,
    wants_colour,
)
from launcher.local import REPO_ROOT
from launcher.run import LocalStack
from launcher.services import CLOUD_API, CLOUD_WORKER, EDGE_API, INFERENCE
from tests.launcher.test_run import options

TS = 1_700_000_000.25
AT = clock(TS)
WIDTH = 15


def record(logger: str, msg: str, level: str = "info", **fields: Any) -> str:
    """A line as common.http.JsonLineFormatter writes it."""
    return json.dumps({"ts": TS, "level": level, "logger": logger, "msg": msg, **fields})


def access(service: str, method: str, path: str, status: int, ms: float = 1.5) -> str:
    return record(
        f"{service}.access",
        "request",
        service=service,
        request_id="req_0123456789abcdef",
        method=method,
        path=path,
        status=status,
        ms=ms,
    )


def shown(service: str, line: str, **kwargs: Any) -> str | None:
    return render(service, line, width=WIDTH, **kwargs)


def at(service: str, text: str) -> str:
    return f"{AT} {service:<{WIDTH}}{text}"


# --- what stays off the console by default --------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "line"),
    [
        # The trainer's lease poll, on both ends, every 5 s.
        (CLOUD_API, access(CLOUD_API, "POST", "/api/v1/training-jobs/lease", 204)),
        (
            "trainer",
            record(
                "httpx",
                'HTTP Request: POST http://127.0.0.1:8000/api/v1/training-jobs/lease "HTTP/1.1 204 No Content"',
            ),
        ),
        # Health checks and per-request lines, answered or refused.
        (EDGE_API, access(EDGE_API, "GET", "/health/live", 200)),
        (EDGE_API, access(EDGE_API, "POST", "/device-api/v1/image-queries", 200, 12.5)),
        (EDGE_API, access(EDGE_API, "GET", "/device-api/v1/image-queries/iq_x", 401)),
        ("updater", record("httpx", 'HTTP Request: GET http://127.0.0.1:8718/edge-config "HTTP/1.1 200 OK"')),
        # uvicorn's start-up and shut-down chatter (the launcher says started / ready / stopped).
        (INFERENCE, record("uvicorn.error", "Started server process [2910]")),
        (
            INFERENCE,
            record("uvicorn.error", "Uvicorn running on http://127.0.0.1:8001 (Press CTRL+C to quit)"),
        ),
        (INFERENCE, record("uvicorn.error", "Shutting down")),
        (CLOUD_API, record("alembic.runtime.migration", "Context impl SQLiteImpl.")),
        (CLOUD_API, record("cloud.anything", "details", level="debug")),
        # The trainer's training steps, which it reports again with the job id.
        ("trainer", record("training.from_export", "train: epoch 3/20")),
    ],
)
def test_request_lines_polls_and_chatter_show_only_when_verbose(service: str, line: str) -> None:
    assert describe(service, line).level == "debug"
    assert shown(service, line) is None
    assert shown(service, line, verbose=True) is not None


def test_verbose_shows_a_request_and_a_call_in_short() -> None:
    request = access(EDGE_API, "GET", "/health/live", 200, 1.25)
    assert shown(EDGE_API, request, verbose=True) == at(EDGE_API, "GET /health/live -> 200 in 1.25 ms")
    call = record("httpx", 'HTTP Request: POST http://127.0.0.1:8000/x "HTTP/1.1 204 No Content"')
    assert shown("trainer", call, verbose=True) == at(
        "trainer", "called POST http://127.0.0.1:8000/x -> 204 No Content"
    )


# --- events -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "line", "text"),
    [
        (
            CLOUD_API,
            record(
                "cloud.escalations",
                "escalation received",
                image_query_id="iq_2b4",
                detector_id="det_Digit",
                edge_id="edge-1",
                reason="low_confidence",
            ),
            "escalated iq_2b4 for review (low confidence; detector det_Digit, edge edge-1)",
        ),
        (
            EDGE_API,
            record(
                "edge.image_queries",
                "query escalated",
                image_query_id="iq_9",
                detector_id="det_Coins",
                reason="low_confidence",
                confidence=0.6234,
                threshold=0.9,
            ),
            "escalated iq_9 (low confidence 0.62 < 0.90; detector det_Coins)",
        ),
        (
            EDGE_API,
            record(
                "edge.image_queries",
                "query escalated",
                image_query_id="iq_8",
                detector_id="det_Coins",
                reason="out_of_domain",
                confidence=0.95,
                threshold=0.9,
            ),
            "escalated iq_8 (out of domain; detector det_Coins)",
        ),
        (
            CLOUD_API,
            access(CLOUD_API, "POST", "/api/v1/review/items/rv_77/answer", 200),
            "review item rv_77 answered by a person",
        ),
        (
            "updater",
            record(
                "updater",
                "model deployed",
                detector_id="det_Digit",
                version="v2",
                previous="v1",
                source="download",
                load_ms=41.5,
            ),
            "model v2 of det_Digit installed (was v1; download, loaded in 41.5 ms)",
        ),
        (
            INFERENCE,
            record(
                "inference.service", "model swapped", detector_id="det_Digit", version="v2", previous=None
            ),
            "model of det_Digit swapped to v2 (was none)",
        ),
        (
            CLOUD_API,
            record(
                "cloud.registry", "model registered", detector_id="det_Digit", version="v2", promoted=True
            ),
            "model v2 of det_Digit registered and promoted to production",
        ),
        (
            CLOUD_WORKER,
            record(
                "cloud.worker",
                "training job queued",
                job_id="tj_1",
                detector_id="det_Digit",
                trigger="new_labels",
                new_labels=5,
            ),
            "training job tj_1 queued for det_Digit (new labels, 5 new labels)",
        ),
        (
            "trainer",
            record("training.service", "job leased", job_id="tj_1", detector_id="det_Digit"),
            "training job tj_1 started for det_Digit",
        ),
        (
            "trainer",
            record(
                "training.service",
                "[train] epoch 3/20 loss 0.4100 acc 0.8800 | val 0.5000 / 0.8500",
                job_id="tj_1",
            ),
            "training job tj_1 [train] epoch 3/20 loss 0.4100 acc 0.8800 | val 0.5000 / 0.8500",
        ),
        (
            "trainer",
            record(
                "training.service",
                "job ended",
                job_id="tj_1",
                ending="succeeded",
                model_id="m_1",
                version="v2",
                promoted=False,
                error=None,
            ),
            "training job tj_1 finished: model v2 registered as a candidate",
        ),
        (
            "trainer",
            record(
                "training.service",
                "trainer started",
                owner="trainer-1",
                cloud_url="http://127.0.0.1:8000",
                device="cpu",
            ),
            "looking for training jobs at http://127.0.0.1:8000 (device cpu)",
        ),
        (
            CLOUD_API,
            record("alembic.runtime.migration", "Running upgrade 0001 -> 0002, backbones, image embeddings"),
            "database migrated to 0002 (backbones, image embeddings)",
        ),
        # Anything else: the message and its fields.
        (
            EDGE_API,
            record("edge.config", "edge config loaded", source="/config/edge-config.yaml"),
            "edge config loaded (source=/config/edge-config.yaml)",
        ),
        (
            "updater",
            record("updater", "updater stopped", cancelled=0),
            "updater stopped (cancelled=0)",
        ),
        # The demo bundles are built by the same training code: their steps are shown there.
        ("demo-models", record("training.from_export", "train: epoch 3/20"), "train: epoch 3/20"),
    ],
)
def test_an_event_is_one_readable_line(service: str, line: str, text: str) -> None:
    assert describe(service, line).level == "info"
    assert shown(service, line) == at(service, text)


def test_a_failed_training_job_is_a_warning_with_its_error() -> None:
    line = record("training.service", "job ended", job_id="tj_1", ending="failed", error="no labels")
    entry = describe("trainer", line)
    assert entry.level == "warning"
    assert entry.text == "warning: training job tj_1 failed: no labels"


def test_warnings_and_errors_say_so_and_an_exception_shows_its_last_line() -> None:
    warning = record(
        "edge.priors", "prior not fetched", level="warning", detector_id="det_Digit", error="unknown detector"
    )
    assert shown(EDGE_API, warning) == at(
        EDGE_API, "warning: prior not fetched (detector_id=det_Digit, error=unknown detector)"
    )
    crash = record(
        "updater",
        "model poll crashed",
        level="error",
        detector_id="det_Digit",
        exc='Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: boom',
    )
    entry = describe("updater", crash)
    assert entry.level == "error"
    assert entry.text == "error: model poll crashed (detector_id=det_Digit) -- ValueError: boom"
    assert describe(CLOUD_API, record("x", "disk full", level="critical")).level == "error"


def test_a_server_error_answered_by_a_service_is_shown() -> None:
    line = access(EDGE_API, "POST", "/device-api/v1/image-queries", 500)
    entry = describe(EDGE_API, line)
    assert entry.level == "error"
    assert entry.text == "POST /device-api/v1/image-queries -> 500 in 1.5 ms (request req_0123456789abcdef)"


def test_long_values_are_cut_on_the_console() -> None:
    line = record("cloud.x", "something", detail="y" * 500, items=["a", "b"])
    text = describe(CLOUD_API, line).text
    assert "y" * 157 + "..." in text and "y" * 158 not in text
    assert "items=a, b" in text


# --- lines that are not JSON -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "IntelliOptics cloud: first start, accounts created",
        "  admin     admin / s3cret-Passw0rd",
        "  API token io_abc  (written to /tmp/api-token)",
        "Traceback (most recent call last):",
        '  File "/work/main/edge/api/app.py", line 3, in <module>',
        "2024/01/01 12:00:00 [emerg] 12#12: bind() to 127.0.0.1:30101 failed (98: Address already in use)",
        "{not json at all",
        '["a", "json", "list"]',
        '{"no": "msg"}',
        "",
    ],
)
def test_a_line_that_is_not_a_log_record_passes_through(line: str) -> None:
    assert shown("gateway", line, now=TS) == at("gateway", line)


def test_a_line_that_is_not_json_is_coloured_by_what_it_says() -> None:
    assert describe("gateway", "2024/01/01 [emerg] 1#1: bind() failed").level == "error"
    assert describe("gateway", "2024/01/01 [warn] 1#1: conflicting server name").level == "warning"
    assert describe("demo-models", "2024-01-01 12:00:00 WARNING training: slow").level == "warning"
    assert describe(CLOUD_API, "Traceback (most recent call last):").level == "error"
    assert describe(CLOUD_API, "  admin     admin / pw").level == "info"


# --- the line's form --------------------------------------------------------------------------------


def test_the_time_is_the_record_s_own_in_local_time() -> None:
    assert clock(TS) == time.strftime("%H:%M:%S", time.localtime(TS))
    line = record("edge.config", "edge config applied")
    assert shown(EDGE_API, line, now=TS + 3600) == at(EDGE_API, "edge config applied")


def test_colour_marks_the_level_and_the_name_and_nothing_without_it() -> None:
    warning = describe(EDGE_API, record("edge.priors", "prior not fetched", level="warning"))
    plain = format_entry(EDGE_API, warning, width=WIDTH)
    assert "\x1b[" not in plain
    coloured = format_entry(EDGE_API, warning, width=WIDTH, colour=True)
    assert "\x1b[33mwarning: prior not fetched\x1b[0m" in coloured
    assert EDGE_API in coloured and AT in coloured
    error = format_entry(EDGE_API, describe(EDGE_API, record("x", "boom", level="error")), colour=True)
    assert "\x1b[31merror: boom\x1b[0m" in error


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    assert wants_colour(FakeTerminal(), {}) is True
    assert wants_colour(io.StringIO(), {}) is False
    assert wants_colour(FakeTerminal(), {"NO_COLOR": "1"}) is False
    assert wants_colour(FakeTerminal(), {"TERM": "dumb"}) is False


# --- the JSON log files -----------------------------------------------------------------------------


def test_a_record_goes_into_the_log_file_as_it_is_and_anything_else_wrapped() -> None:
    line = access(EDGE_API, "GET", "/health/live", 200)
    assert record_line(line) == line
    wrapped = json.loads(record_line("  admin     admin / pw", now=TS))
    assert wrapped == {"ts": TS, "level": "info", "logger": "output", "msg": "  admin     admin / pw"}
    assert json.loads(record_line("[emerg] bind() failed", now=TS))["level"] == "error"


def test_a_log_file_is_private_appended_and_rotated_by_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "edge-api.jsonl"
    log = LogFile(path, max_bytes=100, backups=2)
    for index in range(4):
        log.write(json.dumps({"n": index, "pad": "x" * 30}))
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    kept = [path, path.with_name("edge-api.jsonl.1")]
    assert [[json.loads(x)["n"] for x in p.read_text().splitlines()] for p in kept] == [[2, 3], [0, 1]]
    # A later run appends, and rotates the oldest away.
    again = LogFile(path, max_bytes=100, backups=2)
    again.write(json.dumps({"n": 4, "pad": "x" * 30}))
    again.close()
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [4]
    assert [json.loads(x)["n"] for x in path.with_name("edge-api.jsonl.2").read_text().splitlines()] == [0, 1]
    assert not path.with_name("edge-api.jsonl.3").exists()


# --- the console --------------------------------------------------------------------------------


def console_lines(console: Console, stream: io.StringIO) -> list[str]:
    console.close()
    return stream.getvalue().splitlines()


def test_the_json_console_prints_every_line_as_it_is_behind_the_name(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(stream, mode="json", width=WIDTH, log_dir=tmp_path)
    request = access(EDGE_API, "GET", "/health/live", 200)
    console.sink(EDGE_API)(request)
    console.sink("gateway")("nginx says hi")
    console.note(EDGE_API, "started (pid 1)", plain=None)
    console.note(EDGE_API, None, plain="starting edge-api")
    console.say("the edge escalates to http://127.0.0.1:8000")
    assert console_lines(console, stream) == [
        f"{EDGE_API:<{WIDTH}}| {request}",
        f"{'gateway':<{WIDTH}}| nginx says hi",
        f"{'launcher':<{WIDTH}}| starting edge-api",
        f"{'launcher':<{WIDTH}}| the edge escalates to http://127.0.0.1:8000",
    ]
    assert (tmp_path / "edge-api.jsonl").read_text() == request + "\n"


def test_the_readable_console_shows_events_and_keeps_every_line_in_the_files(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(stream, mode="readable", width=WIDTH, log_dir=tmp_path / "logs")
    request = access(EDGE_API, "POST", "/device-api/v1/image-queries", 200)
    escalation = record(
        "cloud.escalations", "escalation received", image_query_id="iq_1", detector_id="d", reason="audit"
    )
    console.sink(EDGE_API)(request)
    console.sink(CLOUD_API)(escalation)
    console.sink(CLOUD_API)("  API token io_abc")
    console.note(EDGE_API, "started (pid 42)", plain="starting edge-api")
    console.note(EDGE_API, "exited with status 1", level="error")
    lines = console_lines(console, stream)
    assert lines[0] == at(CLOUD_API, "escalated iq_1 for review (audit; detector d)")
    assert lines[1].endswith(f" {CLOUD_API:<{WIDTH}}  API token io_abc")
    assert lines[2].endswith(f" {EDGE_API:<{WIDTH}}started (pid 42)")
    assert lines[3].endswith(f" {EDGE_API:<{WIDTH}}error: exited with status 1")
    assert len(lines) == 4
    logs = tmp_path / "logs"
    assert (logs / "edge-api.jsonl").read_text() == request + "\n"
    kept = [json.loads(x) for x in (logs / "cloud-api.jsonl").read_text().splitlines()]
    assert kept[0] == json.loads(escalation) and kept[1]["msg"] == "  API token io_abc"
    notes = [json.loads(x) for x in (logs / "launcher.jsonl").read_text().splitlines()]
    assert [(n["service"], n["level"], n["msg"]) for n in notes] == [
        (EDGE_API, "info", "started (pid 42)"),
        (EDGE_API, "error", "exited with status 1"),
    ]


def test_verbose_shows_the_request_lines_too(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(stream, mode="readable", verbose=True, width=WIDTH)
    console.sink(EDGE_API)(access(EDGE_API, "GET", "/health/live", 200, 2.0))
    assert console_lines(console, stream) == [at(EDGE_API, "GET /health/live -> 200 in 2 ms")]


def test_a_log_directory_that_cannot_be_written_is_reported_once(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    stream = io.StringIO()
    console = Console(stream, mode="readable", width=WIDTH, log_dir=blocker / "logs")
    console.sink(CLOUD_API)(record("cloud.x", "one"))
    console.sink(CLOUD_API)(record("cloud.x", "two"))
    lines = console_lines(console, stream)
    assert len(lines) == 3 and "warning: the JSON logs are not written from now on" in lines[0]
    assert lines[1:] == [at(CLOUD_API, "one"), at(CLOUD_API, "two")]


def test_lines_from_several_threads_stay_whole(tmp_path: Path) -> None:
    stream = io.StringIO()
    console = Console(stream, mode="readable", width=WIDTH, log_dir=tmp_path)

    def emit(service: str) -> None:
        sink = console.sink(service)
        for index in range(200):
            sink(record("x", f"event {index}"))

    threads = [threading.Thread(target=emit, args=(name,)) for name in (CLOUD_API, EDGE_API, INFERENCE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = console_lines(console, stream)
    assert len(lines) == 600 and all(line.startswith(AT) for line in lines)
    assert all(len((tmp_path / f"{n}.jsonl").read_text().splitlines()) == 200 for n in (CLOUD_API, EDGE_API))


# --- the stack and the command line -----------------------------------------------------------------


@pytest.mark.processes
def test_the_stack_says_started_ready_and_stopped_per_service_on_the_readable_console(tmp_path: Path) -> None:
    output = io.StringIO()
    opts = options(tmp_path, console="readable", log_dir=tmp_path / "logs")
    stack = LocalStack(opts, output)
    try:
        stack.start(threading.Event())
    finally:
        stack.stop()
    log = output.getvalue()
    width = stack.width
    for name in (CLOUD_API, CLOUD_WORKER, INFERENCE, EDGE_API, "gateway"):
        assert f" {name:<{width}}started (pid " in log, log
        assert f" {name:<{width}}stopped\n" in log, log
    for name in (CLOUD_API, INFERENCE, EDGE_API, "gateway"):
        port = stack.services[name].port
        assert f" {name:<{width}}ready at http://127.0.0.1:{port} (" in log, log
    assert f" {'demo-models':<{width}}done\n" in log
    assert "| " not in log  # nothing in the json form
    launcher_log = (tmp_path / "logs" / "launcher.jsonl").read_text()
    assert '"msg": "starting edge-api"' in launcher_log
    assert (tmp_path / "logs" / "inference.jsonl").read_text().startswith('{"ts": ')


def test_the_command_line_defaults_to_the_readable_console_and_keeps_json_logs(tmp_path: Path) -> None:
    default = options_from_args(parser().parse_args(["run", "--state-dir", str(tmp_path)]), {})
    assert (default.console, default.verbose) == ("readable", False)
    assert default.log_dir == tmp_path / "logs"
    verbose = options_from_args(parser().parse_args(["run", "-v"]), {})
    assert (verbose.console, verbose.verbose) == ("readable", True)
    assert verbose.log_dir == REPO_ROOT / ".intellioptics" / "logs"
    assert options_from_args(parser().parse_args(["run", "--json"]), {}).console == "json"
