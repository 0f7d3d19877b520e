"""ModuleWatcher against real files in a temporary folder, with the real inotify watch."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tinywasm_wasi.supervisor.watcher import ModuleChange, ModuleWatcher, OnChange

DEBOUNCE = 0.05
TIMEOUT = 5.0

Start = Callable[..., Awaitable[ModuleWatcher]]


class Recorder:
    """An async on_change that keeps every change it is given."""

    def __init__(self) -> None:
        self.changes: list[ModuleChange] = []

    async def __call__(self, change: ModuleChange) -> None:
        self.changes.append(change)

    async def wait_for(self, count: int) -> list[ModuleChange]:
        await until(lambda: len(self.changes) >= count)
        return self.changes


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def settle(debounce: float = DEBOUNCE) -> None:
    """Long enough for any further change from the last burst to be delivered."""
    await asyncio.sleep(3 * debounce)


def change(directory: Path, name: str, exists: bool) -> ModuleChange:
    return ModuleChange(name, directory / f"{name}.wasm", exists)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a watcher (bounded); every watcher started is closed after the test."""
    made: list[ModuleWatcher] = []

    async def start(
        directory: Path, on_change: OnChange, *, debounce: float = DEBOUNCE
    ) -> ModuleWatcher:
        watcher = ModuleWatcher(directory, on_change, debounce=debounce)
        made.append(watcher)
        await asyncio.wait_for(watcher.start(), TIMEOUT)
        return watcher

    yield start
    for watcher in made:
        await asyncio.wait_for(watcher.close(), TIMEOUT)


async def test_create_write_delete(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tinywasm.watcher")
    seen = Recorder()
    await start(tmp_path, seen)

    (tmp_path / "a.wasm").write_bytes(b"\0asm1")
    assert await seen.wait_for(1) == [change(tmp_path, "a", True)]
    (tmp_path / "a.wasm").write_bytes(b"\0asm2")
    assert await seen.wait_for(2) == [change(tmp_path, "a", True)] * 2
    (tmp_path / "a.wasm").unlink()
    assert (await seen.wait_for(3))[2] == change(tmp_path, "a", False)
    await settle()
    assert len(seen.changes) == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "tinywasm.watcher"]
    assert "change: a.wasm written" in messages
    assert "change: a.wasm deleted" in messages


async def test_write_right_after_start_is_seen(tmp_path: Path) -> None:
    for round_ in range(5):
        directory = tmp_path / str(round_)
        directory.mkdir()
        seen = Recorder()
        watcher = ModuleWatcher(directory, seen, debounce=DEBOUNCE)
        try:
            # asyncio.timeout, not wait_for: no extra task, so the write happens in the very
            # step start() returns in, with no chance for the watcher's task to catch up.
            async with asyncio.timeout(TIMEOUT):
                await watcher.start()
                (directory / "a.wasm").write_bytes(b"\0asm")
            assert await seen.wait_for(1) == [change(directory, "a", True)]
        finally:
            await asyncio.wait_for(watcher.close(), TIMEOUT)


@pytest.mark.parametrize("temp", [".a.wasm.tmp", "a_temp_1.wasm", ".a.wasm", "a.tmp.wasm"])
async def test_write_temp_then_replace_is_one_change(
    tmp_path: Path, start: Start, temp: str
) -> None:
    seen = Recorder()
    await start(tmp_path, seen)
    (tmp_path / temp).write_bytes(b"\0asm")
    os.replace(tmp_path / temp, tmp_path / "a.wasm")
    await seen.wait_for(1)
    await settle()
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_rename_unloads_old_name_and_loads_new(tmp_path: Path, start: Start) -> None:
    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    seen = Recorder()
    await start(tmp_path, seen)
    os.replace(tmp_path / "a.wasm", tmp_path / "b.wasm")
    await seen.wait_for(2)
    await settle()
    assert seen.changes == [change(tmp_path, "a", False), change(tmp_path, "b", True)]


async def test_burst_of_writes_is_one_change(tmp_path: Path, start: Start) -> None:
    seen = Recorder()
    await start(tmp_path, seen)
    for i in range(20):
        (tmp_path / "a.wasm").write_bytes(b"\0asm" + bytes([i]))
        await asyncio.sleep(0.002)
    await seen.wait_for(1)
    await settle()
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_burst_longer_than_debounce_is_one_change(tmp_path: Path, start: Start) -> None:
    # 20 writes over ~0.2 s, each gap well inside the 0.1 s quiet period: watchfiles alone
    # would split this into several batches.
    seen = Recorder()
    await start(tmp_path, seen, debounce=0.1)
    for i in range(20):
        (tmp_path / "a.wasm").write_bytes(b"\0asm" + bytes([i]))
        await asyncio.sleep(0.01)
    await seen.wait_for(1)
    await settle(0.1)
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_non_module_files_are_ignored(tmp_path: Path, start: Start) -> None:
    seen = Recorder()
    await start(tmp_path, seen)
    for name in [".x.wasm", "x_temp_1.wasm", "notes.txt", "x.wasm.tmp", "x.tmp.wasm", "x~.wasm"]:
        (tmp_path / name).write_bytes(b"junk")
        (tmp_path / name).unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.wasm").write_bytes(b"\0asm")  # only the top level counts
    await settle()
    # A real module written afterwards proves the watcher was listening all along.
    (tmp_path / "z.wasm").write_bytes(b"\0asm")
    await seen.wait_for(1)
    await settle()
    assert seen.changes == [change(tmp_path, "z", True)]


async def test_failing_on_change_is_logged_and_watching_goes_on(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[ModuleChange] = []

    async def on_change(change: ModuleChange) -> None:
        seen.append(change)
        if change.name == "bad":
            raise RuntimeError("load failed")

    await start(tmp_path, on_change)
    (tmp_path / "bad.wasm").write_bytes(b"\0asm")
    await until(lambda: any(r.exc_info for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "tinywasm.watcher" and r.exc_info]
    assert record.levelno == logging.ERROR
    assert "bad.wasm" in record.getMessage()
    assert "load failed" in caplog.text  # the traceback

    (tmp_path / "good.wasm").write_bytes(b"\0asm")
    await until(lambda: len(seen) == 2)
    assert seen == [change(tmp_path, "bad", True), change(tmp_path, "good", True)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_sync_and_async_on_change(tmp_path: Path, start: Start, kind: str) -> None:
    seen: list[ModuleChange] = []

    def sync_on_change(change: ModuleChange) -> None:
        seen.append(change)

    async def async_on_change(change: ModuleChange) -> None:
        await asyncio.sleep(0)
        seen.append(change)

    await start(tmp_path, sync_on_change if kind == "sync" else async_on_change)
    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    await until(lambda: len(seen) == 1)
    assert seen == [change(tmp_path, "a", True)]


async def test_close_twice_then_start_raises(tmp_path: Path) -> None:
    watcher = ModuleWatcher(tmp_path, Recorder(), debounce=DEBOUNCE)
    await asyncio.wait_for(watcher.start(), TIMEOUT)
    with pytest.raises(RuntimeError, match="already started"):
        await watcher.start()
    await asyncio.wait_for(watcher.close(), TIMEOUT)
    await asyncio.wait_for(watcher.close(), TIMEOUT)
    with pytest.raises(RuntimeError, match="is closed"):
        await watcher.start()


async def test_close_without_start(tmp_path: Path) -> None:
    watcher = ModuleWatcher(tmp_path, Recorder())
    await watcher.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await watcher.start()


async def test_close_cancels_a_stuck_on_change(tmp_path: Path, start: Start) -> None:
    entered = asyncio.Event()

    async def stuck(change: ModuleChange) -> None:
        entered.set()
        await asyncio.Event().wait()

    watcher = await start(tmp_path, stuck)
    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    await asyncio.wait_for(watcher.close(), TIMEOUT)


async def test_missing_directory(tmp_path: Path) -> None:
    watcher = ModuleWatcher(tmp_path / "nope", Recorder())
    with pytest.raises(FileNotFoundError, match="--modules-dir") as raised:
        await watcher.start()
    assert "nope" in str(raised.value)
    await watcher.close()


async def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="--modules-dir"):
        await ModuleWatcher(tmp_path / "file", Recorder()).start()


def test_negative_debounce(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="debounce"):
        ModuleWatcher(tmp_path, Recorder(), debounce=-1)


async def test_directory_removed_logs_and_stops(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "modules"
    directory.mkdir()
    (directory / "a.wasm").write_bytes(b"\0asm")
    seen = Recorder()
    await start(directory, seen)
    shutil.rmtree(directory)
    await until(lambda: "was removed or replaced" in caplog.text)
    await seen.wait_for(1)
    assert seen.changes == [change(directory, "a", False)]
    assert [r.levelno for r in caplog.records if "removed" in r.getMessage()] == [logging.ERROR]


async def test_directory_renamed_away_stops(
    tmp_path: Path,
    start: Start,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A relative path, as `--modules-dir modules` gives: events then carry relative paths.
    monkeypatch.chdir(tmp_path)
    Path("modules").mkdir()
    seen = Recorder()
    await start(Path("modules"), seen)
    Path("modules", "a.wasm").write_bytes(b"\0asm")
    assert await seen.wait_for(1) == [change(Path("modules"), "a", True)]

    os.rename("modules", "moved")
    await until(lambda: "was removed or replaced" in caplog.text)
    Path("moved", "b.wasm").write_bytes(b"\0asm")  # the inode is still watched by inotify
    await settle()
    assert len(seen.changes) == 1
