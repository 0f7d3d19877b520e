"""Source watch → build → swap: `SourceWatcher` rebuilds a module folder when its sources change.

It watches each module folder for the manifest's ``watch`` globs (or the language's
defaults, plus ``module.toml``), waits until the folder has been quiet for `debounce`
seconds, and builds it into the modules folder in a worker thread. The server's own
module watcher then sees the new ``.wasm`` and hot-swaps it as for any other write.

A failed build writes nothing, so the running version keeps serving. Every build, good
or failed, is reported to `on_result` as a `BuildReport` (the server logs it and sends it
to browsers on ``$sys.build``). One build per folder runs at a time; changes during a
build start one more build after it (the latest sources win).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchfiles import awatch

from tinywasm_wasi.build.compile import (
    BuildError,
    BuildResult,
    build_module,
    load_manifest,
    toolchain_for,
)
from tinywasm_wasi.policy.manifest import MANIFEST_FILE

__all__ = ["BUILD_TOPIC", "BuildReport", "SourceWatcher", "watch_globs"]

log = logging.getLogger("tinywasm.dev")

BUILD_TOPIC = "$sys.build"  # where browsers see builds (the dashboard subscribes to $sys.>)


@dataclass(frozen=True, slots=True)
class BuildReport:
    """One build of one module folder: what it made, or why it failed (with file:line)."""

    module: str  # the folder's name
    ok: bool
    duration_ms: float
    file: str | None = None  # the .wasm written, on success
    size: int | None = None
    error: str | None = None  # the reason, first line first
    output: str = ""  # the compiler's output (errors with file:line, or warnings)
    warnings: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "ok": self.ok,
            "duration_ms": round(self.duration_ms, 1),
            "file": self.file,
            "size": self.size,
            "error": self.error,
            "output": self.output,
            "warnings": list(self.warnings),
            "at": self.at,
        }


def watch_globs(folder: Path) -> tuple[str, ...]:
    """The globs a folder's rebuilds follow: its manifest's, or its language's, and the manifest."""
    try:
        manifest = load_manifest(folder)
        globs = manifest.watch or toolchain_for(manifest.language).watch_globs
    except BuildError:
        globs = ()  # an invalid manifest: a fix to module.toml is what triggers the next build
    return (*globs, MANIFEST_FILE)


def _matches(folder: Path, path: Path, globs: Sequence[str]) -> bool:
    try:
        relative = path.relative_to(folder).as_posix()
    except ValueError:
        return False
    if any(part.startswith(".") for part in Path(relative).parts):
        return False  # editors' swap files, .git, caches
    return any(fnmatch.fnmatch(relative, glob) or relative == glob for glob in globs)


class SourceWatcher:
    """Rebuild module folders into `modules_dir` when their sources change."""

    def __init__(
        self,
        folders: Sequence[Path],
        modules_dir: Path,
        on_result: Callable[[BuildReport], None],
        *,
        debounce: float = 0.1,
        cache_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.folders = [f.resolve() for f in folders]
        self._modules_dir = modules_dir
        self._on_result = on_result
        self._debounce = debounce
        self._cache_dir = cache_dir
        self._environ = environ
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._building: dict[Path, asyncio.Task[None]] = {}
        self._again: set[Path] = set()
        self._ready: asyncio.Future[None] | None = None

    # -- building ---------------------------------------------------------------------------

    async def build(self, folder: Path) -> BuildReport:
        """Build `folder` now (in a worker thread) and report it."""
        started = time.perf_counter()
        try:
            result: BuildResult = await asyncio.to_thread(
                build_module,
                folder,
                self._modules_dir,
                cache_dir=self._cache_dir,
                environ=self._environ,
            )
        except BuildError as exc:
            message = str(exc)
            report = BuildReport(
                module=folder.name,
                ok=False,
                duration_ms=(time.perf_counter() - started) * 1000,
                error=message.split("\n", 1)[0],
                output=exc.output or message.partition("\n")[2],
            )
        else:
            report = BuildReport(
                module=folder.name,
                ok=True,
                duration_ms=result.duration_ms,
                file=result.path.name,
                size=result.size,
                output=result.compiler_output,
                warnings=tuple(f.message for f in result.warnings),
            )
        self._report(report)
        return report

    def _report(self, report: BuildReport) -> None:
        if report.ok:
            log.info(
                "built %s -> %s (%d bytes) in %.0f ms",
                report.module,
                report.file,
                report.size or 0,
                report.duration_ms,
            )
            for warning in report.warnings:
                log.warning("build %s: %s", report.module, warning)
        else:
            log.error(
                "build %s failed; the running version keeps serving: %s",
                report.module,
                report.error,
            )
            # One record a line: the log escapes a newline inside a record (no forged lines).
            for line in (report.output or "").splitlines():
                if line.strip():
                    log.error("build %s: %s", report.module, line)
        try:
            self._on_result(report)
        except Exception:
            log.exception("reporting the build of %s failed", report.module)

    def _schedule(self, folder: Path) -> None:
        """Build `folder`; if a build of it runs, once more after it (latest sources win)."""
        running = self._building.get(folder)
        if running is not None and not running.done():
            self._again.add(folder)
            return
        self._building[folder] = asyncio.create_task(self._build_loop(folder))

    async def _build_loop(self, folder: Path) -> None:
        while True:
            self._again.discard(folder)
            await self.build(folder)
            if folder not in self._again or self._stop.is_set():
                return

    # -- watching ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching; returns once the watch is live, so any later save is seen."""
        missing = [str(f) for f in self.folders if not f.is_dir()]
        if missing:
            raise FileNotFoundError(f"module folder {missing[0]!r} does not exist")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._task = asyncio.create_task(self._watch(), name="watch module sources")
        await asyncio.wait({self._ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # raises why it ended
        log.info("watching the sources of %s", ", ".join(f.name for f in self.folders))

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        ready = self._ready
        stop = self._stop

        class _Stop(asyncio.Event):
            """Its first poll from watchfiles' thread proves the watch is set up."""

            polled = False

            def is_set(self) -> bool:
                if not self.polled:
                    self.polled = True
                    if ready is not None:
                        with contextlib.suppress(RuntimeError):
                            loop.call_soon_threadsafe(_resolve, ready)
                return stop.is_set()

        debounce_ms = max(1, round(self._debounce * 1000))
        async for changes in awatch(
            *self.folders,
            stop_event=_Stop(),
            debounce=debounce_ms,
            step=min(50, debounce_ms),
            recursive=True,
        ):
            for folder in self.folders:
                globs = watch_globs(folder)
                if any(_matches(folder, Path(path), globs) for _, path in changes):
                    self._schedule(folder)

    async def close(self) -> None:
        """Stop watching and wait for running builds. Safe to call twice."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)
            self._task = None
        builds = [t for t in self._building.values() if not t.done()]
        if builds:
            await asyncio.gather(*builds, return_exceptions=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
