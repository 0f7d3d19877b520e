"""The modules folder: which files are modules, their names and rules, their limits, their bytes.

Everything that looks at the folder is here: file names (`[NN-]name@[rule].wasm`),
`rule.txt` beside them, `limits.toml` (re-read only when it changes), and
reading a file without reading more than the size cap.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tinywasm_wasi.exceptions import ModuleLoadError
from tinywasm_wasi.policy.limits import LIMITS_FILE, Limits, LimitsError, parse_overrides
from tinywasm_wasi.policy.module_config import (
    CONFIG_SUFFIX,
    ConfigError,
    ModuleConfig,
    config_file_name,
    parse_module_config,
)
from tinywasm_wasi.policy.rules import (
    ModuleFileName,
    Rule,
    RuleError,
    group_by_module,
    parse_file_name,
    parse_rule,
    rule_txt_paths,
)

__all__ = [
    "DEFAULT_MAX_MODULE_SIZE",
    "FolderScan",
    "ModuleLoader",
    "Source",
    "is_config_file",
    "is_module_file",
    "load_overrides",
    "load_rule_txt",
    "read_regular",
]

log = logging.getLogger("tinywasm.host")

DEFAULT_MAX_MODULE_SIZE = 16 * 1024 * 1024
MAX_TEXT_FILE = 64 * 1024  # rule.txt and limits.toml

# Where a swap's new bytes come from: a callable, so a follow-up re-reads the file.
Source = Callable[[], bytes | None]


def is_module_file(path: Path) -> bool:
    """True for `name.wasm`; False for hidden and temporary files editors and compilers leave."""
    name = path.name
    return (
        name.endswith(".wasm")
        and not name.startswith(".")
        and "_temp_" not in name
        and not name.endswith((".tmp.wasm", "~.wasm"))
        and len(name) > len(".wasm")
    )


def is_config_file(path: Path) -> bool:
    """True for a module's `<name>.toml` (not limits.toml, not hidden)."""
    name = path.name
    return (
        name.endswith(CONFIG_SUFFIX)
        and name != LIMITS_FILE
        and not name.startswith(".")
        and len(name) > len(CONFIG_SUFFIX)
    )


def read_regular(path: Path, max_size: int) -> bytes | None:
    """At most `max_size` + 1 bytes of the regular file at `path`; None when it is missing.

    Opened without blocking, so a FIFO or a device in the folder cannot stall the
    server; anything that is not a regular file (after following symlinks) is refused.

    Raises:
        ModuleLoadError: not a regular file, or unreadable; the message says which.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ModuleLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ModuleLoadError(
                f"{path.name} is not a regular file ({_kind(mode)}); "
                "only regular files (or symlinks to them) are read"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_size + 1)
    except OSError as exc:
        raise ModuleLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a file"


def read_file(path: Path, max_size: int = DEFAULT_MAX_MODULE_SIZE) -> Source:
    """A source that reads `path` when called; None when the file is gone.

    Reads at most one byte past `max_size`, so an oversized file is refused
    without being read whole. Raises ModuleLoadError for what is not a regular file.
    """
    return lambda: read_regular(path, max_size)


def _read_text(path: Path) -> str | None:
    data = read_regular(path, MAX_TEXT_FILE)
    if data is None:
        return None
    if len(data) > MAX_TEXT_FILE:
        raise ModuleLoadError(f"{path.name} is over {MAX_TEXT_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModuleLoadError(f"{path.name} is not UTF-8 text: {exc}") from None


def load_overrides(directory: Path, defaults: Limits) -> dict[str, Limits]:
    """Read `limits.toml` from `directory`; no file means no overrides.

    Raises:
        LimitsError: the file is unreadable or invalid (the message says where).
    """
    path = directory / LIMITS_FILE
    try:
        text = _read_text(path)
    except ModuleLoadError as exc:
        raise LimitsError(f"cannot read {path}: {exc}") from None
    return {} if text is None else parse_overrides(text, defaults)


def load_rule_txt(modules_dir: Path, name: str) -> tuple[Rule, Path] | None:
    """Read the first ``rule.txt`` of `rule_txt_paths`; None when there is none.

    An empty (or white-space only) ``rule.txt`` means ``*``, as in the reference.
    It is read when the module loads or swaps: edit it, then reload the module.

    Raises:
        RuleError: the file is unreadable or holds an invalid rule (the message names it).
    """
    for path in rule_txt_paths(modules_dir, name):
        try:
            text = _read_text(path)
        except ModuleLoadError as exc:
            raise RuleError(f"cannot read {path}: {exc}") from None
        if text is None:
            continue
        try:
            return parse_rule(text if text.strip() else "*"), path
        except RuleError as exc:
            raise RuleError(f"{path}: {exc}") from None
    return None


@dataclass(frozen=True, slots=True)
class FolderScan:
    """The module files of a folder at start-up, one per name, and the files refused."""

    files: list[Path]
    refused: dict[str, str]  # file name -> reason


class ModuleLoader:
    """Reads the modules folder for the supervisor; holds the parsed `limits.toml`."""

    def __init__(
        self,
        limits: Limits,
        *,
        max_module_size: int = DEFAULT_MAX_MODULE_SIZE,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.limits = limits
        self.environment: Mapping[str, str] = environment or {}
        self.max_module_size = max_module_size
        self.directory: Path | None = None
        self._overrides: dict[str, Limits] = {}  # from limits.toml, per module name
        self._limits_stamp: tuple[int, int, int] | None = None  # the file when last read
        # Loads ask from several compile threads at once: one reads the file while the
        # others wait, so none sees the new stamp with the old overrides.
        self._limits_lock = threading.Lock()

    def scan(self, directory: Path) -> FolderScan:
        """The module files in `directory`, sorted by name; conflicts and bad names refused."""
        self.directory = directory
        names = [p.name for p in directory.iterdir() if is_module_file(p)]
        refused: dict[str, str] = {}
        for file_name in names:
            try:
                parse_file_name(file_name)
            except RuleError as exc:
                refused[file_name] = str(exc)
        files = []
        for name, group in group_by_module(names).items():
            first, *others = group
            files.append(directory / first.file)
            for other in others:
                refused[other.file] = (
                    f"module {name!r} already loads from {first.file}; remove one of them"
                )
        files.sort()
        return FolderScan(files, dict(sorted(refused.items())))

    def find_file(self, name: str) -> ModuleFileName | None:
        """The file module `name` loads from now: ``name.wasm`` or ``[NN-]name@[rule].wasm``.

        Looked up in the folder each time, so a rename (a middleware's new rule)
        is seen by the next load or swap. With several candidates the first by
        file name wins (the others are refused at startup with the reason).
        """
        if self.directory is None:
            return None
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return None
        # Every file of module `name` has the name in it: parse only those, so a burst of
        # N new files costs N cheap listings, not N² name parses holding the GIL.
        files = [e for e in entries if name in e and is_module_file(Path(e))]
        found = group_by_module(files).get(name)
        return found[0] if found else None

    def with_rule_txt(self, parsed: ModuleFileName) -> ModuleFileName:
        """The reference layout: a `rule.txt` gives a module without `@[rule]` its rule.

        Raises:
            RuleError: the rule.txt holds an invalid rule.
        """
        if parsed.rule is not None or self.directory is None:
            return parsed
        found = load_rule_txt(self.directory, parsed.name)
        if found is None:
            return parsed
        return ModuleFileName(parsed.file, parsed.name, found[0], parsed.order)

    def path_of(self, file: ModuleFileName | None) -> Path | None:
        return None if file is None or self.directory is None else self.directory / file.file

    def reader(self, path: Path | None) -> Source:
        """A source for `path` (None: a source that says the file is gone)."""
        return (lambda: None) if path is None else read_file(path, self.max_module_size)

    def config_for(self, name: str) -> ModuleConfig:
        """Module `name`'s config from ``<name>.toml`` in the folder (none: empty).

        Raises:
            ModuleLoadError: the file is unreadable or invalid (the message says why,
                naming keys and variables, never values).
        """
        if self.directory is None:
            return ModuleConfig()
        file = config_file_name(name)
        try:
            text = _read_text(self.directory / file)
            if text is None:
                return ModuleConfig()
            return parse_module_config(text, self.environment, file)
        except ConfigError as exc:
            raise ModuleLoadError(str(exc)) from None

    def limits_for(self, name: str) -> Limits:
        """The limits for module `name`: the defaults, overridden by limits.toml if it says so.

        The file is looked at at every load, so an edit applies to the next load or
        swap; it is parsed again only when it changed (a folder of hundreds of modules
        starts with one parse). A broken file is logged and ignored (the defaults apply).
        """
        if self.directory is None:
            return self.limits
        try:
            info = (self.directory / LIMITS_FILE).stat()
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None
        with self._limits_lock:
            if stamp != self._limits_stamp:
                try:
                    overrides = load_overrides(self.directory, self.limits)
                except LimitsError as exc:
                    log.error("ignoring the limits file: %s", exc)
                    overrides = {}
                self._overrides, self._limits_stamp = overrides, stamp
            return self._overrides.get(name, self.limits)
