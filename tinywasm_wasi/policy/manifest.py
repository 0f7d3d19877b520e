"""A module folder's manifest, ``module.toml``: its language, how it builds, what it watches.

Pure: `parse_manifest` takes the TOML text and returns a checked `Manifest`; nothing here
reads a file or runs a compiler (that is `tinywasm_wasi.build`). Every key but
``language`` is optional::

    language = "c"                        # c, cpp, zig, rust, go, assemblyscript or wat
    output = "20-auth@[echo_http].wasm"   # default <folder name>.wasm; order and rule as
                                          # for any module file (policy/rules.py)
    sources = ["*.c"]                     # files given to the compiler; default per language
    watch = ["*.c", "*.h"]                # what `tinywasm dev` watches; default per language

    [build]
    flags = ["-DDEBUG"]                   # added to the language's default arguments
    # or replace the default command entirely:
    # command = "make"
    # args = ["OUT={output}"]
    timeout = 300                         # seconds

    [limits]                              # same keys as limits.toml, for this module
    memory_limit = "16MiB"
    call_timeout = 0.5

In ``command``, ``args`` and ``flags`` these placeholders are replaced: ``{output}`` (the file
the build must write), ``{sources}`` (each source file, as separate arguments), ``{name}``
(the folder's name), ``{dir}`` (the folder), ``{include}`` (the C headers), ``{sdk}`` (the
language SDKs' folder) and ``{python}`` (this Python).

A folder without a manifest is built as the language its files show (`guess_language`).
"""

from __future__ import annotations

import enum
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tinywasm_wasi.config import MAX_CALL_TIMEOUT
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.limits import LIMITS_FILE, Limits, LimitsError, limits_from_tables
from tinywasm_wasi.policy.rules import RuleError, parse_file_name

__all__ = [
    "MANIFEST_FILE",
    "PLACEHOLDERS",
    "BuildSpec",
    "Language",
    "Manifest",
    "ManifestError",
    "check_output_name",
    "expand",
    "guess_language",
    "parse_manifest",
]

MANIFEST_FILE = "module.toml"
DEFAULT_TIMEOUT = 300.0  # seconds; zig's first build at a new level fills its cache (~20 s)
PLACEHOLDERS = ("output", "sources", "name", "dir", "include", "sdk", "python")


class Language(enum.StrEnum):
    """A guest language `tinywasm build` knows."""

    C = "c"
    CPP = "cpp"
    ZIG = "zig"
    RUST = "rust"
    GO = "go"
    ASSEMBLYSCRIPT = "assemblyscript"
    WAT = "wat"


# The file endings that show a folder's language, strongest first (a C++ folder has .h too).
_ENDINGS: tuple[tuple[Language, tuple[str, ...]], ...] = (
    (Language.CPP, (".cpp", ".cc", ".cxx")),
    (Language.C, (".c",)),
    (Language.ZIG, (".zig",)),
    (Language.RUST, (".rs",)),
    (Language.GO, (".go",)),
    (Language.ASSEMBLYSCRIPT, (".ts",)),
    (Language.WAT, (".wat",)),
)


class ManifestError(TinywasmError, ValueError):
    """module.toml is invalid; the message names the key and how to fix it."""


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """The ``[build]`` table: a replacement command, or extra flags for the default one."""

    command: str | None = None
    args: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Manifest:
    """One module folder's manifest. Empty globs mean "the language's defaults"."""

    language: Language
    output: str
    sources: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    build: BuildSpec = field(default_factory=BuildSpec)
    # The [limits] table as written (checked against Limits); None when there is none.
    limits: Mapping[str, Any] | None = None


def check_output_name(name: str) -> str:
    """Return `name` if it is a module file name the server loads; else raise ManifestError."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ManifestError(
            f"output name {name!r} must be a plain file name (no folder, not hidden), "
            "e.g. chat.wasm or 20-auth@[users].wasm"
        )
    try:
        parse_file_name(name)
    except RuleError as exc:
        raise ManifestError(f"output name {name!r}: {exc}") from None
    return name


def guess_language(file_names: Iterable[str]) -> Language | None:
    """The language a folder's files show (C++ over C, then C, Zig, ...), or None."""
    names = [n for n in file_names if not n.startswith(".")]
    for language, endings in _ENDINGS:
        if any(n.endswith(endings) and not n.endswith(".d.ts") for n in names):
            return language
    return None


def _strings(where: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise ManifestError(f'{where} must be a list of strings, e.g. ["*.c", "*.h"]')
    for item in value:
        if not isinstance(item, str) or not item:
            raise ManifestError(f'{where} must be a list of non-empty strings, e.g. ["*.c"]')
    return tuple(value)


def _globs(where: str, value: object) -> tuple[str, ...]:
    globs = _strings(where, value)
    for glob in globs:
        if glob.startswith("/") or ".." in glob.split("/"):
            raise ManifestError(
                f"{where}: {glob!r} must stay inside the module folder (a relative glob, "
                "no '..'), e.g. \"src/*.c\""
            )
    return globs


def _check_placeholders(where: str, words: Iterable[str]) -> None:
    for word in words:
        try:
            word.format_map({p: "" for p in PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise ManifestError(
                f"{where}: {word!r} has an unknown or malformed placeholder ({exc}); "
                f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}, and {{{{ }}}} for braces"
            ) from None


def _build(table: object) -> BuildSpec:
    if not isinstance(table, dict):
        raise ManifestError('[build] must be a table, e.g. [build] then flags = ["-O3"]')
    unknown = sorted(set(table) - {"command", "args", "flags", "timeout"})
    if unknown:
        raise ManifestError(
            f"[build] has an unknown key {unknown[0]!r}; use command, args, flags or timeout"
        )
    command = table.get("command")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ManifestError('[build] command must be a program name, e.g. command = "make"')
    args = _strings("[build] args", table["args"]) if "args" in table else None
    flags = _strings("[build] flags", table["flags"]) if "flags" in table else ()
    if flags and (command is not None or args is not None):
        raise ManifestError(
            "[build] flags add to the language's default command; with command or args, "
            "put them in args instead"
        )
    timeout = table.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not (math.isfinite(timeout) and 0 < timeout <= MAX_CALL_TIMEOUT)
    ):
        raise ManifestError(
            f"[build] timeout must be seconds, more than 0 and at most {MAX_CALL_TIMEOUT:g}"
        )
    words = [*(args or ()), *flags, *([command] if command else [])]
    _check_placeholders("[build]", words)
    return BuildSpec(command=command, args=args, flags=flags, timeout=float(timeout))


def _limits(table: object, name: str) -> Mapping[str, Any]:
    if not isinstance(table, dict):
        raise ManifestError('[limits] must be a table, e.g. [limits] then memory_limit = "16MiB"')
    try:  # the same keys and checks as limits.toml
        limits_from_tables({name: table}, Limits())
    except LimitsError as exc:
        raise ManifestError(str(exc).replace(f"{LIMITS_FILE}: [{name}]", "[limits]")) from None
    return dict(table)


def expand(words: Iterable[str], values: Mapping[str, str], sources: Iterable[str]) -> list[str]:
    """`words` with placeholders replaced; a word that is exactly ``{sources}`` becomes many."""
    source_list = list(sources)
    out: list[str] = []
    for word in words:
        if word == "{sources}":
            out.extend(source_list)
        else:
            out.append(word.format_map({**values, "sources": " ".join(source_list)}))
    return out


def parse_manifest(text: str, folder_name: str) -> Manifest:
    """The manifest in `text`, for the module folder named `folder_name`.

    Raises:
        ManifestError: not TOML, an unknown key or language, or a bad value; the
            message names the key and what to write instead.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}") from None
    known = {"language", "output", "sources", "watch", "build", "limits"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ManifestError(f"unknown key {unknown[0]!r}; the keys are {', '.join(sorted(known))}")
    languages = ", ".join(lang.value for lang in Language)
    raw_language = data.get("language")
    if raw_language is None:
        raise ManifestError(f'language is missing: add e.g. language = "c" (one of {languages})')
    try:
        language = Language(raw_language)
    except ValueError:
        raise ManifestError(
            f"language {raw_language!r} is not one this build knows: use one of {languages}"
        ) from None
    output = data.get("output", f"{folder_name}.wasm")
    if not isinstance(output, str):
        raise ManifestError('output must be a string, e.g. output = "chat.wasm"')
    return Manifest(
        language=language,
        output=check_output_name(output),
        sources=_globs("sources", data["sources"]) if "sources" in data else (),
        watch=_globs("watch", data["watch"]) if "watch" in data else (),
        build=_build(data["build"]) if "build" in data else BuildSpec(),
        limits=_limits(data["limits"], folder_name) if "limits" in data else None,
    )
