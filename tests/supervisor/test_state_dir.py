"""StateDir: atomic writes, JSON lines, and a folder that cannot be written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tinywasm_wasi.cli import parse_config
from tinywasm_wasi.config import Config
from tinywasm_wasi.supervisor.state_dir import StateDir


def test_write_then_read_back_creates_the_folder(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "mods" / ".tinywasm")
    assert state.read("pins.json") is None
    assert state.write("pins.json", b'{"chat": "abc"}')
    assert state.read("pins.json") == b'{"chat": "abc"}'
    assert state.write("pins.json", b"{}")
    assert state.read("pins.json") == b"{}"
    # Nothing but the file itself: the temporary file was renamed into place.
    assert sorted(p.name for p in state.path.iterdir()) == ["pins.json"]


def test_json_lines_round_trip_and_skip_damaged_lines(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    assert state.append_line("history.jsonl", {"module": "chat", "n": 1})
    assert state.append_line("history.jsonl", {"module": "echo", "text": "é\nx"})
    with open(state.path / "history.jsonl", "a") as f:
        f.write('{"torn": \n[1, 2]\n\n')  # a torn line, a non-object, an empty line
    assert state.append_line("history.jsonl", {"module": "tag"})
    records = list(state.read_lines("history.jsonl"))
    assert records == [
        {"module": "chat", "n": 1},
        {"module": "echo", "text": "é\nx"},
        {"module": "tag"},
    ]


def test_unwritable_folder_warns_once_and_turns_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    state = StateDir(blocker / ".tinywasm")  # a folder inside a regular file: cannot exist
    with caplog.at_level(logging.WARNING, logger="tinywasm.state"):
        assert not state.write("pins.json", b"{}")
        assert not state.append_line("history.jsonl", {"a": 1})
    assert not state.enabled
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "cannot be written" in warnings[0] and "--state-dir" in warnings[0]


def test_a_fifo_in_place_of_a_state_file_is_ignored_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path)
    os.mkfifo(tmp_path / "pins.json")
    with caplog.at_level(logging.WARNING, logger="tinywasm.state"):
        assert state.read("pins.json") is None
    assert "not a regular file" in caplog.text


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\0b"])
def test_file_names_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        StateDir(tmp_path).write(name, b"")


def test_config_default_is_inside_the_modules_folder(tmp_path: Path) -> None:
    assert Config(modules_dir=tmp_path).state_path == tmp_path / ".tinywasm"
    assert Config(modules_dir=tmp_path, state_dir=tmp_path / "s").state_path == tmp_path / "s"
    flag = parse_config(["--state-dir", str(tmp_path / "f")], {})
    assert flag.state_path == tmp_path / "f"
    env = parse_config([], {"TINYWASM_STATE_DIR": str(tmp_path / "e")})
    assert env.state_path == tmp_path / "e"


def test_without_create_parents_a_missing_parent_is_not_recreated(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    state = StateDir(modules / ".tinywasm", create_parents=False)
    assert not state.append_line("history.jsonl", {"a": 1})
    assert not modules.exists()  # a deleted modules folder stays deleted
    assert state.enabled  # and the state comes back with the folder
    modules.mkdir()
    assert state.append_line("history.jsonl", {"a": 2})
    assert list(state.read_lines("history.jsonl")) == [{"a": 2}]
