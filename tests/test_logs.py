"""Structured logs: JSON lines parsed one by one, one event vocabulary, one level per event."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.scenarios.test_hot_swap import relay, sha, wait_for_sha
from tests.support import eventually
from tinywasm_wasi.config import LogFormat
from tinywasm_wasi.logs import JsonFormatter, configure_logging
from tinywasm_wasi.policy.events import LogEvent, event_extra
from tinywasm_wasi.policy.history import Outcome


class JsonLines:
    """A handler on the `tinywasm` loggers that writes JSON lines to a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JsonFormatter())

    def lines(self) -> list[dict[str, object]]:
        """Every line written so far, each parsed on its own."""
        parsed = []
        for line in self.buffer.getvalue().splitlines():
            value = json.loads(line)
            assert isinstance(value, dict), line
            parsed.append(value)
        return parsed

    def events(self, module: str) -> list[dict[str, object]]:
        return [line for line in self.lines() if line.get("module") == module and "event" in line]


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    lines = JsonLines()
    logger = logging.getLogger("tinywasm")
    logger.addHandler(lines.handler)
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(lines.handler)
        logger.setLevel(before)


def test_a_json_line_has_the_fields_the_docs_name() -> None:
    stream = io.StringIO()
    configure_logging("INFO", LogFormat.JSON, stream)
    try:
        log = logging.getLogger("tinywasm.test")
        log.warning(
            "swap %s refused",
            "chat",
            extra=event_extra(LogEvent.REFUSE, "chat", sha256="ab" * 32, error="bad magic"),
        )
        log.info('plain line with "quotes" and ünïcode')
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
        # watchfiles' own "N changes detected" lines are quiet.
        logging.getLogger("watchfiles.main").info("1 change detected")
    finally:
        configure_logging("WARNING", LogFormat.TEXT)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, plain, failed = lines
    assert datetime.fromisoformat(str(first["ts"])).tzinfo is not None
    assert first["level"] == "WARNING" and first["logger"] == "tinywasm.test"
    assert first["msg"] == "swap chat refused"
    assert first["event"] == "refuse" and first["module"] == "chat"
    assert first["sha256"] == "ab" * 32 and first["error"] == "bad magic"
    assert plain["msg"] == 'plain line with "quotes" and ünïcode' and "event" not in plain
    assert "ValueError: boom" in failed["exc"]


@pytest.mark.parametrize("event", list(LogEvent))
def test_each_event_has_one_level(event: LogEvent) -> None:
    assert event.level in (logging.INFO, logging.WARNING, logging.ERROR)
    assert event_extra(event, "m", error=None) == {
        "tinywasm": {"event": event.value, "module": "m"}
    }


async def test_swap_refuse_and_unload_through_the_server_log_one_vocabulary(
    tmp_path: Path, make_server: ServerFactory, json_lines: JsonLines
) -> None:
    path = tmp_path / "relay.wasm"
    first = relay(0)
    path.write_bytes(first)
    (tmp_path / "broken.wasm").write_bytes(b"\0asm not really")
    server = await make_server(modules_dir=tmp_path, watch_debounce=0.03, swap_probation=1.0)
    second = relay(1)
    path.write_bytes(second)
    await wait_for_sha(server, "relay", second)
    # The swap line is written when the new version serves, before probation ends.
    await eventually(
        lambda: [e for e in json_lines.events("relay") if e["event"] == "swap"], "the swap line"
    )
    assert not [e for e in json_lines.events("relay") if e["event"] == "probation"]
    await eventually(
        lambda: [e for e in json_lines.events("relay") if e["event"] == "probation"],
        "the probation line",
    )
    path.write_bytes(second[: len(second) // 2])  # a half-written build: refused
    await eventually(
        lambda: server.host.histories["relay"].records[-1].outcome is Outcome.REFUSED,
        "the half-written file to be refused",
    )
    path.unlink()
    await eventually(lambda: "relay" not in server.host.modules, "relay to unload")
    await eventually(
        lambda: [e for e in json_lines.events("relay") if e["event"] == "unload"], "unload line"
    )

    relay_events = json_lines.events("relay")
    assert [e["event"] for e in relay_events] == ["load", "swap", "probation", "refuse", "unload"]
    load, swap, probation, refuse, unload = relay_events
    assert load["sha256"] == sha(first) and load["trigger"] == "startup"
    assert swap["sha256"] == sha(second) and swap["previous_sha256"] == sha(first)
    assert swap["trigger"] == "watcher" and isinstance(swap["duration_ms"], float)
    assert "held" in swap
    assert probation["outcome"] == "swapped" and probation["sha256"] == sha(second)
    assert "error" in refuse and refuse["level"] == "WARNING"
    # One level per event wherever it happens: refusals at start-up and on a swap alike.
    broken = json_lines.events("broken")
    assert [(e["event"], e["level"]) for e in broken] == [("refuse", "WARNING")]
    for line in json_lines.lines():
        if "event" in line:
            assert line["level"] == logging.getLevelName(LogEvent(str(line["event"])).level)
        datetime.fromisoformat(str(line["ts"]))
    assert unload["level"] == "INFO"
