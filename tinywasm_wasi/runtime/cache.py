"""Compiled modules kept on disk, so a restart or a swap back to known bytes skips compiling.

An entry holds `wasmtime.Module.serialize()` output behind a header this module
writes and checks before anything reaches `Module.deserialize`, which trusts its
input: deserializing bytes wasmtime did not produce for this engine is unsafe.
File `<key>.twcache`, little-endian:

    magic    8 bytes    ENTRY_MAGIC
    format   u32        ENTRY_FORMAT
    key      32 bytes   sha256 of (format, the .wasm's sha256, `fingerprint`)
    length   u64        of the blob
    digest   32 bytes   sha256 of the blob
    blob     `length` bytes

`fingerprint` covers the wasmtime version, the host (OS, architecture, CPU
flags) and the engine settings, so an entry made by another wasmtime or another
engine configuration never matches. An entry that fails a check (corrupt,
truncated, foreign, or refused by wasmtime) is deleted, logged once, and the
module is compiled as usual.

Trust: the checks catch accidents, not someone who can write to the folder (a
digest is not a signature). The folder is therefore created private (0700), and
caching is turned off, with a warning, if it is writable by group or others or
owned by another user.

Bound: at most `max_entries` entries and `max_bytes` bytes. Past either, the
least recently used entries (by mtime; a hit touches its entry) are deleted down
to 80 % of both, so a folder scan happens once per many writes, not per write.
The tally between scans counts only this process's writes: processes sharing a
folder may overshoot until one of them scans.

Nothing here fails a load: an unusable folder (missing and not creatable, not
writable, unsafe) or a failed write logs one warning and turns the cache off
for this process. A problem with one entry never does: whatever sits in an
entry's place that is not an entry (a folder, a FIFO, a socket, a link, an
unreadable or oversized file) is removed when the folder is opened or the entry
is looked up, or skipped with a warning if it cannot be; it is opened without
blocking, so a FIFO cannot hang a load. Writes go to a private temp file renamed into place, so
readers and concurrent writers only ever see whole entries.

Why not wasmtime's own `Config.cache`: its entries carry no checksum, and a
damaged one can run damaged code or kill the process (measured in
ARCHITECTURE.md, "Start-up", with `python -m bench.cache`).
"""

from __future__ import annotations

import enum
import errno
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import wasmtime

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "ENTRY_FORMAT",
    "ENTRY_MAGIC",
    "CacheStats",
    "EngineSettings",
    "ModuleCache",
    "fingerprint",
]

log = logging.getLogger("tinywasm.cache")

ENTRY_MAGIC = b"\x89TWMOD\r\n"
ENTRY_FORMAT = 1
ENTRY_SUFFIX = ".twcache"
_HEADER = struct.Struct("<8sI32sQ32s")
_TEMP_SUFFIX = ".tmp"
_STALE_TEMP = 3600.0  # seconds after which a temp file is a crashed writer's leftover

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # a small module's entry is about 25 KB
_LOW_WATER = 0.8

# The engine settings an entry is only valid for: wasmtime.Config attribute → value.
EngineSettings = Mapping[str, bool | int | str]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the cache did since it was created (this process only)."""

    hits: int = 0
    misses: int = 0
    discarded: int = 0
    stored: int = 0
    evicted: int = 0


class _State(enum.Enum):
    NEW = "new"  # folder not looked at yet (done on first use, off the event loop)
    OPEN = "open"
    OFF = "off"  # unusable folder or failed write: logged once, every call is a miss


class _Invalid(Exception):
    """An entry failed a check; the message says which."""


def _wasmtime_version() -> str:
    try:
        return version("wasmtime")
    except PackageNotFoundError:  # wasmtime itself still refuses another version's artifacts
        return "unknown"


@functools.cache
def _host() -> str:
    """OS, architecture and a digest of the CPU feature flags wasmtime compiles for."""
    flags = ""
    with suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    digest = hashlib.sha256(flags.encode()).hexdigest()[:16]
    return f"{sys.platform}-{platform.machine()}-cpu:{digest}"


def fingerprint(settings: EngineSettings, *, wasmtime_version: str | None = None) -> str:
    """The text an entry's key covers besides the module: wasmtime, host, engine settings."""
    return json.dumps(
        {
            "wasmtime": wasmtime_version or _wasmtime_version(),
            "host": _host(),
            "engine": dict(settings),
        },
        sort_keys=True,
    )


class ModuleCache:
    """A folder of compiled modules for one engine configuration. Thread-safe.

    Args:
        directory: created (0700) on first use if missing.
        settings: the engine's settings, the same mapping the engine was built from.
        max_entries, max_bytes: the bound; least recently used entries go first.
        wasmtime_version: override the installed version (for tests and tools).
    """

    def __init__(
        self,
        directory: Path,
        settings: EngineSettings,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        wasmtime_version: str | None = None,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self.directory = directory
        self.fingerprint = fingerprint(settings, wasmtime_version=wasmtime_version)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._stats = CacheStats()
        self._entries = 0  # tally since the last scan
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        """False once the folder proved unusable (a warning said why)."""
        return self._state is not _State.OFF

    def stats(self) -> CacheStats:
        return self._stats

    def key(self, wasm_sha256: str) -> str:
        """The entry key for a module whose .wasm bytes have this sha256 (hex)."""
        text = f"tinywasm-wasi module cache {ENTRY_FORMAT}\n{wasm_sha256}\n{self.fingerprint}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, wasm_sha256: str) -> Path:
        return self.directory / f"{self.key(wasm_sha256)}{ENTRY_SUFFIX}"

    # -- load and store --------------------------------------------------------------------

    def load(self, engine: wasmtime.Engine, wasm_sha256: str, name: str) -> wasmtime.Module | None:
        """The cached module for these bytes, or None (compile it, then `store` it)."""
        if not self._ready():
            return None
        key = self.key(wasm_sha256)
        path = self.directory / f"{key}{ENTRY_SUFFIX}"
        try:
            raw, opened = _read(path, self.max_bytes)
        except FileNotFoundError:
            self._count(misses=1)
            return None
        except _Invalid as exc:
            self._discard(path, None, name, str(exc))
            return None
        except OSError as exc:
            problem = self._folder_problem()
            if problem is None:  # the folder is fine: this entry is the trouble
                self._discard(path, None, name, f"unreadable: {exc.strerror or exc}")
            else:
                self._count(misses=1)
                self._turn_off(f"cannot read {path}: {problem}")
            return None
        try:
            module = wasmtime.Module.deserialize(engine, _verify(raw, key))
        except _Invalid as exc:
            problem = str(exc)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).strip().splitlines()[:1]
            problem = f"wasmtime refused it: {' '.join(first)}"
        else:
            with suppress(OSError):  # the mtime orders eviction: most recently used last
                os.utime(path)
            self._count(hits=1)
            log.debug("module %s: compiled code loaded from cache entry %s", name, path.name)
            return module
        self._discard(path, opened, name, problem)
        return None

    def store(self, wasm_sha256: str, module: wasmtime.Module, name: str) -> bool:
        """Write `module` as the entry for these bytes; False if the cache is off or it failed."""
        if not self._ready():
            return False
        try:
            blob = bytes(module.serialize())
        except wasmtime.WasmtimeError as exc:
            log.warning("module %s: not cached, wasmtime cannot serialize it: %s", name, exc)
            return False
        key = self.key(wasm_sha256)
        header = _HEADER.pack(
            ENTRY_MAGIC, ENTRY_FORMAT, bytes.fromhex(key), len(blob), hashlib.sha256(blob).digest()
        )
        final = self.directory / f"{key}{ENTRY_SUFFIX}"
        try:
            # mkstemp: 0600 and a unique name, so concurrent writers never share a temp file.
            fd, temp = tempfile.mkstemp(
                prefix=f".{key[:16]}.", suffix=_TEMP_SUFFIX, dir=self.directory
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(header)
                    f.write(blob)
                # No fsync: a torn entry after a crash fails its checks and is recompiled.
                try:
                    os.replace(temp, final)
                except OSError as exc:
                    # Something that is not an entry is in its place (a folder): remove it.
                    if _remove(final) is not None:
                        raise _InTheWay(exc.strerror or str(exc)) from None
                    os.replace(temp, final)
            except BaseException:
                with suppress(OSError):
                    os.unlink(temp)
                raise
        except _InTheWay as exc:
            log.warning(
                "module %s: not cached, %s is in the way and cannot be removed (%s)",
                name,
                final,
                exc,
            )
            return False
        except OSError as exc:
            self._turn_off(f"cannot write {final}: {exc.strerror or exc}")
            return False
        with self._lock:
            self._stats = replace(self._stats, stored=self._stats.stored + 1)
            self._entries += 1
            self._bytes += len(header) + len(blob)
            over = self._entries > self.max_entries or self._bytes > self.max_bytes
        log.debug("module %s: compiled code cached as %s (%d bytes)", name, final.name, len(blob))
        if over:
            self._prune()
        return True

    # -- the folder -----------------------------------------------------------------------------

    def _ready(self) -> bool:
        if self._state is _State.NEW:
            problem = None
            with self._lock:
                if self._state is _State.NEW:
                    problem = self._open()
                    if problem is None:
                        self._state = _State.OPEN
                        log.debug("module cache in %s (%d entries)", self.directory, self._entries)
            if problem is not None:
                self._turn_off(problem)
        return self._state is _State.OPEN

    def _open(self) -> str | None:
        """Create and check the folder, tally its entries; the problem, or None if usable."""
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = directory.stat()
        except OSError as exc:
            return f"cannot create the folder {directory}: {exc.strerror or exc}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{directory} is not a folder"
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            return f"{directory} is owned by another user (uid {st.st_uid})"
        if st.st_mode & 0o022:
            return f"{directory} is writable by other users (run `chmod go-w {directory}`)"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{directory} is not writable"
        self._tally(self._scan())
        return None

    def _turn_off(self, problem: str) -> None:
        with self._lock:
            if self._state is _State.OFF:
                return
            self._state = _State.OFF
        log.warning(
            "compiled-module cache off: %s; modules will be compiled on every load "
            "(point --cache-dir / TINYWASM_CACHE_DIR at a private folder, or set it to off)",
            problem,
        )

    def _discard(self, path: Path, opened: os.stat_result | None, name: str, problem: str) -> None:
        with self._lock:
            self._stats = replace(
                self._stats,
                discarded=self._stats.discarded + 1,
                misses=self._stats.misses + 1,
            )
        failed = None
        try:
            now = os.stat(path, follow_symlinks=False)
            # Only the file that was read: a concurrent writer may have replaced it by now.
            if opened is None or (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                failed = _remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed = exc.strerror or str(exc)
        if failed is not None:
            # Skipped, not fatal: only this entry is unusable; the next look tries again.
            log.warning(
                "module %s: compiled-module cache entry %s is unusable (%s) and cannot be "
                "removed (%s); compiling it; remove it by hand",
                name,
                path,
                problem,
                failed,
            )
            return
        log.warning(
            "module %s: discarded compiled-module cache entry %s (%s); compiling it again",
            name,
            path.name,
            problem,
        )

    def _folder_problem(self) -> str | None:
        """Why the folder itself is unusable now, or None if it is fine."""
        try:
            st = os.stat(self.directory)
        except OSError as exc:
            return exc.strerror or str(exc)
        if not stat.S_ISDIR(st.st_mode):
            return "it is no longer a folder"
        if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
            return "permission denied"
        return None

    def _count(self, *, hits: int = 0, misses: int = 0) -> None:
        with self._lock:
            self._stats = replace(
                self._stats, hits=self._stats.hits + hits, misses=self._stats.misses + misses
            )

    def _scan(self) -> list[tuple[float, int, str]]:
        """(mtime, size, file name) of every entry; deletes crashed writers' temp files."""
        entries = []
        now = time.time()
        with os.scandir(self.directory) as it:
            for item in it:
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # deleted meanwhile
                if not stat.S_ISREG(st.st_mode):
                    if item.name.endswith(ENTRY_SUFFIX):
                        # A folder, FIFO, socket or link where an entry goes: debris.
                        failed = _remove(Path(item.path))
                        log.warning(
                            "compiled-module cache: %s is not an entry; %s",
                            item.path,
                            "removed" if failed is None else f"cannot remove it ({failed})",
                        )
                    continue
                if item.name.endswith(ENTRY_SUFFIX):
                    entries.append((st.st_mtime, st.st_size, item.name))
                elif (
                    item.name.startswith(".")
                    and item.name.endswith(_TEMP_SUFFIX)
                    and now - st.st_mtime > _STALE_TEMP
                ):
                    with suppress(OSError):
                        os.unlink(item.path)
        return entries

    def _tally(self, entries: list[tuple[float, int, str]]) -> None:
        self._entries = len(entries)
        self._bytes = sum(size for _, size, _ in entries)

    def _prune(self) -> None:
        """Delete least recently used entries down to the low-water mark of both bounds."""
        try:
            entries = sorted(self._scan())
        except OSError as exc:
            log.warning("compiled-module cache: cannot list %s to evict: %s", self.directory, exc)
            return
        count, total = len(entries), sum(size for _, size, _ in entries)
        if count <= self.max_entries and total <= self.max_bytes:
            with self._lock:
                self._tally(entries)
            return
        keep_entries = int(self.max_entries * _LOW_WATER)
        keep_bytes = int(self.max_bytes * _LOW_WATER)
        removed, freed = 0, 0
        for _, size, file_name in entries:
            if count - removed <= keep_entries and total - freed <= keep_bytes:
                break
            with suppress(FileNotFoundError):  # another process evicted it first
                os.unlink(self.directory / file_name)
            removed += 1
            freed += size
        with self._lock:
            self._entries, self._bytes = count - removed, total - freed
            self._stats = replace(self._stats, evicted=self._stats.evicted + removed)
        log.info(
            "compiled-module cache %s: evicted %d least recently used entries (%.1f MiB) "
            "to stay within %d entries and %.0f MiB",
            self.directory,
            removed,
            freed / 2**20,
            self.max_entries,
            self.max_bytes / 2**20,
        )


class _InTheWay(Exception):
    """What is in an entry's place cannot be removed; the message says why."""


def _remove(path: Path) -> str | None:
    """Remove what is at `path` (a folder with what is in it; a link, not its target).

    Returns None once it is gone, else the reason it could not be removed.
    """
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _read(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """An entry's bytes and the identity of the file read.

    Opened without blocking, so a FIFO in an entry's place cannot hang the caller.
    Raises _Invalid for something that is not an entry (or is larger than `max_bytes`),
    OSError if it cannot be read.
    """
    try:
        # O_NOFOLLOW: an entry is a file the cache wrote, never a link to elsewhere.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Invalid("a symbolic link, not an entry") from None
        raise
    with os.fdopen(fd, "rb") as f:
        opened = os.fstat(f.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise _Invalid(f"not a regular file ({_kind(opened.st_mode)})")
        if opened.st_size > max_bytes:
            raise _Invalid(f"{opened.st_size} bytes, larger than the whole cache may be")
        return f.read(max_bytes + 1), opened


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _verify(raw: bytes, key: str) -> bytes:
    """The blob of an entry whose header checks out against `key`; raises _Invalid."""
    if len(raw) < _HEADER.size:
        raise _Invalid(f"truncated: {len(raw)} bytes, shorter than the header")
    magic, entry_format, entry_key, length, digest = _HEADER.unpack_from(raw)
    if magic != ENTRY_MAGIC:
        raise _Invalid("not a tinywasm-wasi cache entry (bad magic)")
    if entry_format != ENTRY_FORMAT:
        raise _Invalid(f"entry format {entry_format}, expected {ENTRY_FORMAT}")
    if entry_key != bytes.fromhex(key):
        raise _Invalid("made for other bytes, another wasmtime version or engine configuration")
    blob = raw[_HEADER.size :]
    if len(blob) != length:
        raise _Invalid(f"truncated or padded: {len(blob)} bytes of code, header says {length}")
    if hashlib.sha256(blob).digest() != digest:
        raise _Invalid("corrupt: the code does not match its sha256")
    return blob
