"""The server's own small files beside the modules: history, pins, deploy records.

`StateDir` is a folder (by default `<modules_dir>/.tinywasm/`) the server writes
to and reads back after a restart. It never holds a module: the watcher and the
loader look only at the top level of the modules folder.

Every write is atomic (a temporary file renamed into place) or an append of one
whole JSON line, so a crash leaves either the old content or the new. A folder
that cannot be created or written (a read-only install, a full disk) is not an
error for the server: the first failure logs one warning saying what is lost and
how to fix it, and from then on the state lives in memory only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.supervisor.files import write_atomically
from tinywasm_wasi.supervisor.loader import read_regular

__all__ = ["MAX_STATE_FILE", "STATE_DIR_NAME", "StateDir"]

log = logging.getLogger("tinywasm.state")

STATE_DIR_NAME = ".tinywasm"
# Largest state file read back; a bigger one is refused with a warning, not loaded.
MAX_STATE_FILE = 64 * 1024 * 1024


class StateDir:
    """One folder of server state files, named by plain file names (no sub-folders)."""

    def __init__(self, path: Path, *, create_parents: bool = True) -> None:
        """`create_parents` False: the folder is made only while its parent exists. The
        default state folder lives inside the modules folder, and a deleted modules folder
        must stay deleted, not come back because a history line was written."""
        self.path = path
        self._create_parents = create_parents
        self._enabled = True
        # Made (or found) by this process: history lines are appended without a mkdir each,
        # a system call that waits for the GIL on the event loop while modules load.
        self._made = False

    @property
    def enabled(self) -> bool:
        """False after a write failed; the state is then kept in memory only."""
        return self._enabled

    def write(self, name: str, data: bytes) -> bool:
        """Replace file `name` with `data` atomically. False if the folder is off."""
        path = self.path / self._checked(name)
        return self._in_folder(lambda: write_atomically(path, data))

    def append_line(self, name: str, record: Mapping[str, Any]) -> bool:
        """Append `record` as one JSON line to file `name`. False if the folder is off."""
        path = self.path / self._checked(name)
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"

        def append() -> None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)

        return self._in_folder(append)

    def _in_folder(self, operation: Callable[[], object]) -> bool:
        """Run `operation` in the folder, made first if need be; False if the folder is off.

        The folder is made once, not before every write. If it went away since, the
        write fails with FileNotFoundError: it is made again (if it may be) and the
        write tried once more.
        """
        for last in (False, True):
            if not self._ready():
                return False
            try:
                operation()
                return True
            except FileNotFoundError as exc:
                self._made = False
                if last:
                    self._turn_off(exc)
            except OSError as exc:
                self._turn_off(exc)
                return False
        return False

    def read(self, name: str) -> bytes | None:
        """The content of file `name`, or None when it is missing, unreadable or too big."""
        try:
            data = read_regular(self.path / self._checked(name), MAX_STATE_FILE)
        except ModuleLoadError as exc:
            log.warning("state file %s ignored: %s", name, exc)
            return None
        if data is not None and len(data) > MAX_STATE_FILE:
            log.warning(
                "state file %s ignored: larger than %d bytes; delete it to start afresh",
                name,
                MAX_STATE_FILE,
            )
            return None
        return data

    def read_lines(self, name: str) -> Iterator[dict[str, Any]]:
        """The JSON objects of file `name`, one per line; damaged lines are skipped."""
        data = self.read(name)
        if not data:
            return
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("state file %s: line %d is not JSON; skipped", name, number)
                continue
            if isinstance(record, dict):
                yield record

    def remove(self, name: str) -> None:
        """Delete file `name` if it exists."""
        with contextlib.suppress(OSError):
            os.unlink(self.path / self._checked(name))

    def _ready(self) -> bool:
        if not self._enabled:
            return False
        if self._made:
            return True
        try:
            self.path.mkdir(parents=self._create_parents, exist_ok=True)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not self._create_parents:
                log.debug("state directory %s: its parent is gone; nothing written", self.path)
                return False
            self._turn_off(exc)
            return False
        self._made = True
        return True

    def _turn_off(self, exc: OSError) -> None:
        self._enabled = False
        log.warning(
            "state directory %s cannot be written (%s): history and pins are kept in "
            "memory only until restart; point --state-dir at a writable folder",
            self.path,
            exc.strerror or exc,
        )

    @staticmethod
    def _checked(name: str) -> str:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ValueError(f"state file name {name!r} must be a plain file name")
        return name
