"""Watch the modules folder and report each module file that changed.

`ModuleWatcher` runs `watchfiles.awatch` on the folder (top level only), keeps
only module files (`host.is_module_file`), and merges raw events until the folder
has been quiet for `debounce` seconds. Each burst becomes one `ModuleChange` per
module name. Whether the module exists is read from the disk at the end of the
burst, so write-write-write or write-temp-then-rename gives one change, and a
rename `a.wasm -> b.wasm` gives `a` gone and `b` present.

The watch survives what happens to the folder and to watchfiles:

- watchfiles fails a whole batch on a file name that is not UTF-8 (and may fail for
  other reasons): the watcher logs one line, watches again and re-reads the folder,
  so the changes in the lost batch are still reported.
- The folder is removed, renamed away or replaced: the watcher reports its modules as
  gone, waits for a folder at the same path (looking every `REARM_POLL` seconds),
  watches it and reports every module in it.

A re-read reports every module name the watcher knew of or finds on the disk; a
module whose bytes did not change costs the host one read and hash.

watchfiles' own `step` does not give a quiet period. It ends a batch as soon as
the set of distinct `(change, path)` pairs stops growing for one step, so a
stream of writes to one file comes out as several batches. The watcher therefore
asks watchfiles for short steps and waits out the quiet period itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

from tinywasm_wasi.supervisor.host import is_module_file
from tinywasm_wasi.supervisor.loader import is_config_file

__all__ = ["ModuleChange", "ModuleWatcher"]

log = logging.getLogger("tinywasm.watcher")

OnChange = Callable[["ModuleChange"], Awaitable[None]] | Callable[["ModuleChange"], None]
_Batch = set[tuple[Change, str]]

REARM_POLL = 0.25  # seconds between two looks for a removed modules folder
_RETRY_FIRST = 0.1  # seconds before watching again after watchfiles failed; doubles
_RETRY_MAX = 5.0


class _Rescan(enum.Enum):
    """Queued when the watch is live again after a gap: re-read the whole folder."""

    RESCAN = "rescan"


_Item = _Batch | _Rescan | None


class _Ended(enum.Enum):
    STOPPED = "stopped"  # stop_event set: close()
    GONE = "gone"  # the folder was removed or replaced
    FAILED = "failed"  # watchfiles raised


@dataclass(frozen=True, slots=True)
class ModuleChange:
    """One module file that changed. If `exists` is False the file is gone and the module
    should be unloaded. That can also name a file that was created and removed in one burst."""

    name: str
    path: Path
    exists: bool


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class _StopEvent(asyncio.Event):
    """The `stop_event` given to awatch. Its first poll also reports that the watch is live.

    awatch creates the inotify watch synchronously in `RustNotify(...)` on its first
    iteration, and only then starts polling `stop_event.is_set()` from its worker thread,
    once per step. So the first poll proves that events from now on are recorded. awatch
    has no other hook for that moment, and a fixed sleep would only be a guess.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        super().__init__()
        self.polled = False
        self._loop = loop
        self._ready = ready

    def is_set(self) -> bool:
        # Called on watchfiles' worker thread; reading the flag is a plain attribute read.
        if not self.polled:
            self.polled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(_resolve, self._ready)
        return super().is_set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _names(paths: Iterable[str]) -> set[str]:
    paths = list(paths)
    return {Path(p).name[: -len(".wasm")] for p in paths if is_module_file(Path(p))} | {
        Path(p).stem for p in paths if is_config_file(Path(p))
    }


def _changes(directory: Path, names: Iterable[str]) -> list[ModuleChange]:
    """One change per module name, in name order, with `exists` read from the disk now."""
    changes = []
    for name in sorted(set(names)):
        path = directory / f"{name}.wasm"
        changes.append(ModuleChange(name, path, path.is_file()))
    return changes


def _listing(directory: Path) -> set[str]:
    """The module names in `directory` now; empty if it cannot be listed."""
    try:
        return _names(os.listdir(directory))
    except OSError:
        return set()


def _missing(directory: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"modules directory {str(directory)!r} does not exist: create it, "
        "or point --modules-dir at the folder that holds the .wasm files"
    )


class ModuleWatcher:
    """Call `on_change` for every module file that changed in `directory`."""

    def __init__(
        self,
        directory: Path,
        on_change: OnChange,
        *,
        debounce: float = 0.1,
    ) -> None:
        """Create a watcher; nothing is watched until `start()`.

        Args:
            directory: the modules folder. Only files directly in it are watched.
            on_change: called once per changed module, in name order, one at a time. It may
                be a coroutine function; a plain function runs on the event loop, so it should
                be quick. If it raises, the error is logged and watching goes on.
            debounce: seconds of quiet that end a burst of changes. A burst that never goes
                quiet is cut after max(1.6, 10 * debounce) seconds.

        Raises:
            ValueError: `debounce` is negative.
        """
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0 seconds, got {debounce}")
        self.directory = directory
        self._on_change = on_change
        self._debounce = debounce
        self._max_wait = max(1.6, 10 * debounce)
        # Short steps, so that during a stream of writes batches arrive well within one
        # quiet period, and the first poll (the readiness signal) comes soon.
        self._step_ms = min(50, max(5, round(debounce * 1000 / 10)))
        # watchfiles hands over a batch only after `step` ms without events, so that much
        # of the quiet period has already passed when a batch arrives.
        self._quiet_after_batch = max(0.0, debounce - self._step_ms / 1000)
        self._watched = str(directory)
        self._state = _State.NEW
        self._identity: tuple[int, int] | None = None
        self._absolute = ""
        self._known: set[str] = set()  # module names present when last looked at
        self._stop: _StopEvent | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start watching. Returns once the watch is established, so any later write is seen.

        Raises:
            FileNotFoundError: the directory does not exist.
            NotADirectoryError: the path is not a directory.
            RuntimeError: the watcher is already running or is closed.
        """
        if self._state is _State.CLOSED:
            raise RuntimeError(f"cannot start the watcher on {self._watched!r}: it is closed")
        if self._state is _State.RUNNING or self._reader is not None:
            raise RuntimeError(f"the watcher on {self._watched!r} is already started")
        try:
            stat = os.stat(self.directory)
        except FileNotFoundError:
            raise _missing(self.directory) from None
        if not self.directory.is_dir():
            raise NotADirectoryError(
                f"--modules-dir {self._watched!r} is a file: point it at a directory"
            )
        self._identity = (stat.st_dev, stat.st_ino)
        self._absolute = os.path.abspath(self.directory)

        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        reader = self._reader = asyncio.create_task(
            self._read(queue, ready), name=f"watch {self._watched}"
        )
        try:
            await asyncio.wait({ready, reader}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._shutdown()
            self._reader = None
            raise
        if self._closed():  # close() ran while we waited
            raise RuntimeError(f"cannot start the watcher on {self._watched!r}: it is closed")
        if not ready.done():
            # The reader ended before watchfiles polled once: the watch was never set up.
            ready.cancel()
            self._reader = None
            reader.result()  # raises the reason
            raise RuntimeError(f"watching {self._watched!r} ended before it started")
        # Listed once the watch is live: a module written from now on is seen either way.
        self._known = _listing(self.directory)
        self._state = _State.RUNNING
        self._dispatcher = asyncio.create_task(
            self._dispatch(queue), name=f"dispatch changes in {self._watched}"
        )
        log.info("watching %s for module changes", self._watched)

    async def close(self) -> None:
        """Stop watching and wait for the background tasks to end. Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        was_running = self._state is _State.RUNNING
        self._state = _State.CLOSED
        await self._shutdown()
        if was_running:
            log.info("stopped watching %s", self._watched)

    def _closed(self) -> bool:
        return self._state is _State.CLOSED

    async def _shutdown(self) -> None:
        if self._stop is not None:
            # Makes watchfiles' worker thread return within one step; awatch waits for
            # that thread even when cancelled.
            self._stop.set()
        tasks = {t for t in (self._reader, self._dispatcher) if t is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _read(self, queue: asyncio.Queue[_Item], ready: asyncio.Future[None]) -> None:
        """Watch, and watch again after every gap; None on `queue` marks the end.

        After a gap (the folder gone, or watchfiles failed) the new watch is live before
        `_Rescan` is queued, so nothing written meanwhile is missed.
        """
        loop = asyncio.get_running_loop()
        retry = _RETRY_FIRST
        try:
            ended = await self._watch(queue, ready, first=True)
            while ended is not _Ended.STOPPED and not self._closed():
                if ended is _Ended.GONE:
                    await self._wait_for_directory()
                    retry = _RETRY_FIRST
                else:
                    await asyncio.sleep(retry)  # watchfiles failed: do not spin on it
                    retry = min(_RETRY_MAX, retry * 2)
                    if not self._intact():
                        await self._wait_for_directory()
                live: asyncio.Future[None] = loop.create_future()
                live.add_done_callback(lambda _: queue.put_nowait(_Rescan.RESCAN))
                ended = await self._watch(queue, live, first=False)
        finally:
            queue.put_nowait(None)

    async def _watch(
        self, queue: asyncio.Queue[_Item], ready: asyncio.Future[None], *, first: bool
    ) -> _Ended:
        """One awatch on the folder, until it is stopped, the folder goes, or it fails.

        Only the first one raises, if it fails before it is live: start() reports that.
        """
        stop = self._stop = _StopEvent(asyncio.get_running_loop(), ready)
        try:
            batches = awatch(
                self._watched,
                watch_filter=self._keep,
                step=self._step_ms,
                debounce=round(self._max_wait * 1000),
                stop_event=stop,
                recursive=False,
            )
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    queue.put_nowait(batch)
                    # The folder's own deletion counts even if a new folder got its inode.
                    if self._removed(batch) or not self._intact():
                        log.error(
                            "modules directory %s was removed or replaced: waiting for a folder "
                            "at that path; then what is in it is loaded and the rest unloaded",
                            self._watched,
                        )
                        return _Ended.GONE
        except Exception as exc:
            if first and not stop.polled:  # start() is still waiting and reports it
                if isinstance(exc, FileNotFoundError):
                    raise _missing(self.directory) from exc
                raise
            log.error(
                "watching %s failed (%s: %s); watching it again and re-reading the folder",
                self._watched,
                type(exc).__name__,
                exc,
            )
            return _Ended.FAILED
        return _Ended.STOPPED

    async def _wait_for_directory(self) -> None:
        """Return once a folder is at the watched path again; it becomes the one watched."""
        while True:
            try:
                stat = os.stat(self.directory)
            except OSError:
                stat = None
            if stat is not None and os.path.isdir(self.directory):
                self._identity = (stat.st_dev, stat.st_ino)
                log.warning("modules directory %s is back: watching it", self._watched)
                return
            await asyncio.sleep(REARM_POLL)

    def _keep(self, change: Change, path: str) -> bool:
        # notify reports the folder's own event with an absolute path even when children
        # come relative, so compare absolute paths. _watch then checks the folder and stops.
        if os.path.abspath(path) == self._absolute:
            return change == Change.deleted
        return is_module_file(Path(path)) or is_config_file(Path(path))

    def _removed(self, batch: _Batch) -> bool:
        return any(
            change == Change.deleted and os.path.abspath(path) == self._absolute
            for change, path in batch
        )

    def _intact(self) -> bool:
        try:
            stat = os.stat(self.directory)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    async def _dispatch(self, queue: asyncio.Queue[_Item]) -> None:
        """Merge batches until the folder has been quiet for `debounce` seconds, then deliver."""
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            if first is None:
                return
            rescan = first is _Rescan.RESCAN
            paths = set() if isinstance(first, _Rescan) else {path for _, path in first}
            cutoff = loop.time() + self._max_wait
            ended = False
            while (left := min(self._quiet_after_batch, cutoff - loop.time())) > 0:
                try:
                    async with asyncio.timeout(left):
                        more = await queue.get()
                except TimeoutError:
                    break
                if more is None:
                    ended = True
                    break
                if isinstance(more, _Rescan):
                    rescan = True
                else:
                    paths.update(path for _, path in more)
            names = _names(paths)
            if rescan:
                names |= self._known | _listing(self.directory)
            changes = _changes(self.directory, names)
            for c in changes:
                if c.exists:
                    self._known.add(c.name)
                else:
                    self._known.discard(c.name)
            if changes and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "change: %s",
                    ", ".join(
                        f"{c.path.name} {'written' if c.exists else 'deleted'}" for c in changes
                    ),
                )
            for change in changes:
                await self._deliver(change)
            if ended:
                return

    async def _deliver(self, change: ModuleChange) -> None:
        try:
            result = self._on_change(change)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception(
                "handling the change to %s failed; still watching %s",
                change.path.name,
                self._watched,
            )
