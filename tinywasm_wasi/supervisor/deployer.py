"""Deploy and undeploy over the API: the bytes go into the modules folder, then the normal swap.

A deploy writes the bytes atomically (a hidden temporary file in the folder,
renamed over the module's file), so a restart serves what was deployed, then
drives the same swap a file change would and answers with its outcome. A
version that is refused, or rolled back during probation, is not left on disk:
the file's previous content is put back (or the new file removed), so the folder
keeps describing what runs. The watcher sees these writes too; they read the
same bytes as the running version and change nothing.

An undeploy removes the module's file, then unloads it through the same swap.
Deploys and undeploys of one name run one at a time.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.history import ModuleHistory, Outcome, Trigger, VersionRecord
from tinywasm_wasi.policy.names import check_module_name
from tinywasm_wasi.supervisor.files import write_atomically
from tinywasm_wasi.supervisor.loader import ModuleLoader, read_regular
from tinywasm_wasi.supervisor.pins import PinStore

__all__ = ["DeployOutcome", "DeployResult", "Deployer", "NotDeployedError"]

log = logging.getLogger("tinywasm.deploy")

Swap = Callable[[str, Trigger], Awaitable[VersionRecord | None]]


class DeployOutcome(enum.StrEnum):
    LOADED = "loaded"  # the first version of this name
    SWAPPED = "swapped"
    UNCHANGED = "unchanged"  # the same bytes already serve
    REFUSED = "refused"  # it failed to start; the old version keeps serving
    ROLLED_BACK = "rolled back"  # it failed during probation; the old version serves again
    UNLOADED = "unloaded"

    @property
    def ok(self) -> bool:
        return self not in (DeployOutcome.REFUSED, DeployOutcome.ROLLED_BACK)


_FROM_RECORD = {
    Outcome.LOADED: DeployOutcome.LOADED,
    Outcome.SWAPPED: DeployOutcome.SWAPPED,
    Outcome.PROMOTED: DeployOutcome.SWAPPED,
    Outcome.TIMED_OUT_DRAINING: DeployOutcome.SWAPPED,
    Outcome.REFUSED: DeployOutcome.REFUSED,
    Outcome.ROLLED_BACK: DeployOutcome.ROLLED_BACK,
    Outcome.UNLOADED: DeployOutcome.UNLOADED,
}


class NotDeployedError(ModuleLoadError):
    """An undeploy named a module that has neither a file nor a running version."""


@dataclass(frozen=True, slots=True)
class DeployResult:
    name: str
    outcome: DeployOutcome
    sha256: str
    record: VersionRecord | None = None

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "sha256": self.sha256,
            "error": None if record is None else record.error,
            "result": None if record is None else record.to_json(),
        }


class Deployer:
    """Puts bytes into the modules folder and drives the swap that serves them."""

    def __init__(
        self,
        loader: ModuleLoader,
        swap: Swap,
        idle: Callable[[str], Awaitable[None]],
        histories: Callable[[str], ModuleHistory | None],
        running_sha: Callable[[str], str | None],
        pins: PinStore,
    ) -> None:
        self._loader = loader
        self._swap = swap
        self._idle = idle
        self._histories = histories
        self._running_sha = running_sha
        self._pins = pins
        self._locks: dict[str, asyncio.Lock] = {}
        # Told (name, sha256) once a deploy wrote a module's file, before its swap, and
        # (name, None) when a refused one was put back (supervisor/fleet.py: with
        # --workers, which files a worker has decides what it may run).
        self.written: Callable[[str, str | None], None] | None = None

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def settled(self, name: str) -> None:
        """Wait until no deploy or undeploy of `name` runs.

        The watcher sees a deploy's own writes, including a refused version that is on
        disk only until it is put back. Its change waits for the deploy, then reads what
        the folder holds by then, so a deploy is never swapped (or refused) twice.
        """
        lock = self._locks.get(name)
        if lock is not None and lock.locked():
            async with lock:
                pass

    def _folder(self) -> Path:
        directory = self._loader.directory
        if directory is None or not directory.is_dir():
            raise ModuleLoadError(
                "the server has no modules folder to deploy into (set --modules-dir)"
            )
        return directory

    async def deploy(self, name: str, data: bytes) -> DeployResult:
        """Write `data` as module `name`'s file and swap to it; the result says what happened.

        Raises:
            ModuleNameError: `name` is outside the documented character set.
            ModuleLoadError: no modules folder, the bytes are over the size cap, or the
                file cannot be written.
        """
        check_module_name(name)
        if len(data) > self._loader.max_module_size:
            raise ModuleLoadError(
                f"the module is {len(data)} bytes, over the {self._loader.max_module_size} "
                "byte limit (raise --max-module-size / TINYWASM_MAX_MODULE_SIZE)"
            )
        directory = self._folder()
        sha = hashlib.sha256(data).hexdigest()
        async with self._lock(name):
            found = await asyncio.to_thread(self._loader.find_file, name)
            path = directory / (found.file if found else f"{name}.wasm")
            before = await asyncio.to_thread(read_regular, path, self._loader.max_module_size)
            try:
                await asyncio.to_thread(write_atomically, path, data)
            except OSError as exc:
                raise ModuleLoadError(f"cannot write {path.name}: {exc.strerror or exc}") from None
            if self.written is not None:
                self.written(name, sha)
            pin, pinned = self._pins.get(name), self._pins.data(name)
            if pin is not None and pin.file_sha256 == sha:  # the version rolled back from, again
                self._pins.drop(name, "the version it was pinned against was deployed again")
            began = time.time()
            record = await self._swap(name, Trigger.DEPLOY)
            result = await self._result(name, sha, began, record)
            if not result.outcome.ok:
                await asyncio.to_thread(self._put_back, path, before)
                if self.written is not None:
                    self.written(name, None)
                if before is None:  # a new name, refused: no file, so no refusal to report
                    await self._swap(name, Trigger.DEPLOY)
                made = self._pins.get(name)
                if made is not None and made.file_sha256 == sha:  # pinned against our file
                    self._pins.drop(name, "the file it was pinned against was put back")
                if pin is not None and pinned is not None and self._pins.get(name) is None:
                    self._pins.put(
                        pin, pinned
                    )  # the file holds what it held before: so does the pin
        log.info("deploy %s (%s): %s", name, sha[:12], result.outcome.value)
        return result

    async def _result(
        self, name: str, sha: str, began: float, record: VersionRecord | None
    ) -> DeployResult:
        if record is None or record.sha256 != sha:
            # Folded into an operation already running (e.g. the watcher's): wait for it,
            # then find this version's attempt in the history.
            await self._idle(name)
            history = self._histories(name)
            record = next(
                (
                    r
                    for r in reversed(history.records if history else ())
                    if r.sha256 == sha and r.at >= began
                ),
                None,
            )
        if record is not None and record.outcome in _FROM_RECORD:
            return DeployResult(name, _FROM_RECORD[record.outcome], sha, record)
        if self._running_sha(name) == sha:
            return DeployResult(name, DeployOutcome.UNCHANGED, sha)
        raise ModuleLoadError(
            f"module {name!r}: the deployed version was replaced by a newer change before "
            f"it ran; see GET /api/modules/{name}/history"
        )

    def _put_back(self, path: Path, before: bytes | None) -> None:
        """A refused version does not stay on disk: the folder keeps describing what runs."""
        try:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_atomically(path, before)
        except OSError as exc:
            log.error("deploy: could not restore %s after a refusal: %s", path.name, exc)

    async def undeploy(self, name: str) -> DeployResult:
        """Remove module `name`'s file and unload it.

        Raises:
            ModuleNameError: `name` is outside the documented character set.
            NotDeployedError: no file and no running version of that name.
        """
        check_module_name(name)
        directory = self._folder()
        async with self._lock(name):
            found = await asyncio.to_thread(self._loader.find_file, name)
            running = self._running_sha(name)
            if found is None and running is None:
                raise NotDeployedError(f"no module named {name!r}: see GET /api/modules")
            if found is not None:
                try:
                    (directory / found.file).unlink(missing_ok=True)
                except OSError as exc:
                    raise ModuleLoadError(
                        f"cannot remove {found.file}: {exc.strerror or exc}"
                    ) from None
            record = await self._swap(name, Trigger.DELETE)
            if record is None:
                await self._idle(name)
        log.info("undeploy %s: unloaded", name)
        return DeployResult(name, DeployOutcome.UNLOADED, running or "-", record)
