"""ModuleWatcher against real files in a temporary folder, with the real inotify watch."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support import eventually
from tinywasm_wasi.supervisor.watcher import ModuleChange, ModuleWatcher, OnChange

DEBOUNCE = 0.05
TIMEOUT = 5.0
BARRIER = "zzzz-barrier"  # sorts after every module name used here

Start = Callable[..., Awaitable[ModuleWatcher]]


class Recorder:
    """An async on_change that keeps every change it is given."""

    def __init__(self) -> None:
        self.changes: list[ModuleChange] = []

    async def __call__(self, change: ModuleChange) -> None:
        self.changes.append(change)

    async def wait_for(self, count: int) -> list[ModuleChange]:
        await eventually(lambda: len(self.changes) >= count, f"{count} change(s)")
        return self.changes

    async def settle(self, directory: Path) -> None:
        """Wait until every change already on its way has been delivered.

        A barrier: one more module file, named to sort after every other, is renamed into
        `directory`. inotify reports events in order and the watcher delivers bursts in
        order (and a burst's changes in name order), so once the barrier's change arrives
        nothing written before it is still in flight. The barrier's changes are dropped.
        """
        barrier = change(directory, BARRIER, True)
        before = self.changes.count(barrier)
        temp = directory / f".{BARRIER}.tmp"  # hidden from the watcher until renamed
        temp.write_bytes(b"\0asm barrier %d" % before)
        os.replace(temp, barrier.path)
        await eventually(lambda: self.changes.count(barrier) > before, "the barrier file's change")
        self.changes[:] = [c for c in self.changes if c.name != BARRIER]


def watcher_tasks(directory: str) -> list[asyncio.Task[object]]:
    """The watcher's reading and dispatching tasks on `directory` that are still running."""
    names = {f"watch {directory}", f"dispatch changes in {directory}"}
    return [t for t in asyncio.all_tasks() if t.get_name() in names and not t.done()]


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
    await seen.settle(tmp_path)
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
    await seen.settle(tmp_path)
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_rename_unloads_old_name_and_loads_new(tmp_path: Path, start: Start) -> None:
    (tmp_path / "a.wasm").write_bytes(b"\0asm")
    seen = Recorder()
    await start(tmp_path, seen)
    os.replace(tmp_path / "a.wasm", tmp_path / "b.wasm")
    await seen.wait_for(2)
    await seen.settle(tmp_path)
    assert seen.changes == [change(tmp_path, "a", False), change(tmp_path, "b", True)]


# A busy shared machine can pause the writing loop for tens of milliseconds, which must
# not split a burst: the burst tests use a quiet period well above such pauses.
BURST_DEBOUNCE = 0.5


async def test_burst_of_writes_is_one_change(tmp_path: Path, start: Start) -> None:
    seen = Recorder()
    await start(tmp_path, seen, debounce=BURST_DEBOUNCE)
    for i in range(20):
        (tmp_path / "a.wasm").write_bytes(b"\0asm" + bytes([i]))
        await asyncio.sleep(0.002)
    await seen.wait_for(1)
    await seen.settle(tmp_path)
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_burst_longer_than_debounce_is_one_change(tmp_path: Path, start: Start) -> None:
    # 20 writes over ~1 s, each gap well inside the 0.5 s quiet period: watchfiles alone
    # would split this into several batches.
    seen = Recorder()
    await start(tmp_path, seen, debounce=BURST_DEBOUNCE)
    for i in range(20):
        (tmp_path / "a.wasm").write_bytes(b"\0asm" + bytes([i]))
        await asyncio.sleep(0.05)
    await seen.wait_for(1)
    await seen.settle(tmp_path)
    assert seen.changes == [change(tmp_path, "a", True)]


async def test_non_module_files_are_ignored(tmp_path: Path, start: Start) -> None:
    seen = Recorder()
    await start(tmp_path, seen)
    for name in [".x.wasm", "x_temp_1.wasm", "notes.txt", "x.wasm.tmp", "x.tmp.wasm", "x~.wasm"]:
        (tmp_path / name).write_bytes(b"junk")
        (tmp_path / name).unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "y.wasm").write_bytes(b"\0asm")  # only the top level counts
    await seen.settle(tmp_path)
    # A real module written afterwards proves the watcher was listening all along.
    (tmp_path / "z.wasm").write_bytes(b"\0asm")
    await seen.wait_for(1)
    await seen.settle(tmp_path)
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
    await eventually(lambda: any(r.exc_info for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "tinywasm.watcher" and r.exc_info]
    assert record.levelno == logging.ERROR
    assert "bad.wasm" in record.getMessage()
    assert "load failed" in caplog.text  # the traceback

    (tmp_path / "good.wasm").write_bytes(b"\0asm")
    await eventually(lambda: len(seen) == 2)
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
    await eventually(lambda: len(seen) == 1)
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
    await eventually(lambda: "was removed or replaced" in caplog.text)
    await seen.wait_for(1)
    assert seen.changes == [change(directory, "a", False)]
    assert [r.levelno for r in caplog.records if "removed" in r.getMessage()] == [logging.ERROR]


async def test_directory_renamed_away_is_not_followed_and_a_new_one_is_watched(
    tmp_path: Path,
    start: Start,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A relative path, as `--modules-dir modules` gives: events then carry relative paths.
    monkeypatch.chdir(tmp_path)
    Path("modules").mkdir()
    Path("modules", "old.wasm").write_bytes(b"\0asm")
    seen = Recorder()
    await start(Path("modules"), seen)
    Path("modules", "a.wasm").write_bytes(b"\0asm")
    assert await seen.wait_for(1) == [change(Path("modules"), "a", True)]

    os.rename("modules", "moved")
    await eventually(lambda: "was removed or replaced" in caplog.text)
    Path("moved", "b.wasm").write_bytes(b"\0asm")  # the inode is still watched by inotify
    Path("modules").mkdir()
    Path("modules", "a.wasm").write_bytes(b"\0asm")
    Path("modules", "c.wasm").write_bytes(b"\0asm")
    # The new folder is read whole: a and c are there, old is gone; b (written to the
    # folder that moved away) is never reported.
    await seen.wait_for(4)
    await seen.settle(Path("modules"))
    assert sorted(seen.changes[1:], key=lambda c: c.name) == [
        change(Path("modules"), "a", True),
        change(Path("modules"), "c", True),
        change(Path("modules"), "old", False),
    ]
    assert "is back: watching it" in caplog.text


async def test_directory_removed_and_made_again_is_watched_again(
    tmp_path: Path, start: Start
) -> None:
    directory = tmp_path / "modules"
    directory.mkdir()
    seen = Recorder()
    await start(directory, seen)
    for round_ in range(3):
        (directory / "a.wasm").write_bytes(b"\0asm")
        await seen.settle(directory)
        shutil.rmtree(directory)
        directory.mkdir()
        (directory / f"r{round_}.wasm").write_bytes(b"\0asm")
        await eventually(lambda r=round_: change(directory, f"r{r}", True) in seen.changes)
        await seen.settle(directory)
        (directory / f"r{round_}.wasm").write_bytes(b"\0asm again")
        await eventually(lambda r=round_: seen.changes.count(change(directory, f"r{r}", True)) >= 2)
        shutil.rmtree(directory)
        directory.mkdir()


async def test_a_non_utf8_file_name_does_not_stop_the_watcher(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()
    await start(tmp_path, seen)
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff.wasm")
    for round_ in range(3):
        with open(bad, "wb") as f:
            f.write(b"\0asm %d" % round_)
        (tmp_path / "a.wasm").write_bytes(b"\0asm %d" % round_)
        await eventually(lambda r=round_: seen.changes.count(change(tmp_path, "a", True)) > r)
    await seen.settle(tmp_path)
    assert "watching it again and re-reading the folder" in caplog.text
    # The name is reported as the file system gives it (surrogate escapes), for the
    # loader to judge.
    assert change(tmp_path, os.fsdecode(b"bad\xff"), True) in seen.changes
