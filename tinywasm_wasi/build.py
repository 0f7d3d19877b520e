"""Build guest modules from C sources with zig cc (`pip install ziglang`).

`build_module(Path("modules/chat"))` compiles every ``*.c`` in the directory into
``modules/dist/chat.wasm``. The output is written under a temporary name in the same
directory and renamed into place, so a server watching ``dist`` never loads a half-written
file. The ``tinywasm build`` command (`tinywasm_wasi.cli.build`) reports what this returns.

The output file name can be set, for a middleware's rule and order
(``20-auth@[echo_http].wasm``, see `tinywasm_wasi.policy.rules`), with ``--output-name`` or,
so that every build of the folder agrees, in a ``build.toml`` beside the sources::

    output = "20-auth@[echo_http].wasm"
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from tinywasm_wasi.config import data_dir
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.rules import RuleError, parse_file_name

__all__ = [
    "BUILD_FILE",
    "INCLUDE_DIR",
    "BuildError",
    "build_module",
    "check_output_name",
    "output_name",
    "zig_cc_command",
]

logger = logging.getLogger("tinywasm.build")

# tinywasm.h and friends: shipped in the package, or modules/include in a checkout.
INCLUDE_DIR = data_dir("include", "modules/include")
BUILD_FILE = "build.toml"

# The first build at a new optimisation level fills zig's cache (about 20 s on CI).
COMPILE_TIMEOUT_S = 300.0
_STDERR_MAX_LINES = 40
_STDERR_MAX_CHARS = 4000


class BuildError(TinywasmError):
    """A module could not be built; the message says why and shows the compiler's output."""


def zig_cc_command(sources: list[Path], output: Path, include_dir: Path) -> list[str]:
    """Return the zig cc command line that compiles `sources` into the reactor `output`."""
    return [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-O2",
        "-s",
        "-Wl,-z,stack-size=65536",
        "-I",
        str(include_dir),
        "-o",
        str(output),
        *(str(source) for source in sources),
    ]


def _trim(text: str) -> str:
    lines = text.strip().splitlines()
    if len(lines) > _STDERR_MAX_LINES:
        skipped = len(lines) - _STDERR_MAX_LINES
        lines = [f"... ({skipped} earlier lines omitted)", *lines[-_STDERR_MAX_LINES:]]
    trimmed = "\n".join(lines)
    if len(trimmed) > _STDERR_MAX_CHARS:
        trimmed = "..." + trimmed[-_STDERR_MAX_CHARS:]
    return trimmed


def check_output_name(name: str) -> str:
    """Return `name` if it is a module file name the server loads; else raise BuildError."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise BuildError(
            f"output name {name!r} must be a plain file name (no folder, not hidden), "
            "e.g. chat.wasm or 20-auth@[users].wasm"
        )
    try:
        parse_file_name(name)
    except RuleError as exc:
        raise BuildError(f"output name {name!r}: {exc}") from None
    return name


def output_name(module_dir: Path) -> str:
    """The file `module_dir` builds to: ``output`` in its build.toml, else ``<dir name>.wasm``.

    Raises:
        BuildError: build.toml is not valid TOML, has a key other than ``output``, or
            names an output the server would not load.
    """
    config = module_dir / BUILD_FILE
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{module_dir.name}.wasm"
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read {config}: {exc}") from None
    try:
        settings = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{config} is not valid TOML: {exc}") from None
    unknown = sorted(set(settings) - {"output"})
    if unknown:
        raise BuildError(f"{config}: unknown key {unknown[0]!r}; the only key is 'output'")
    name = settings.get("output", f"{module_dir.name}.wasm")
    if not isinstance(name, str):
        raise BuildError(f'{config}: output must be a string, e.g. output = "chat.wasm"')
    try:
        return check_output_name(name)
    except BuildError as exc:
        raise BuildError(f"{config}: {exc}") from None


def build_module(
    module_dir: Path, out_dir: Path | None = None, *, output: str | None = None
) -> Path:
    """Compile all ``*.c`` files in `module_dir` into ``<out_dir>/<output>``.

    Args:
        module_dir: directory holding the module's C sources, e.g. ``modules/chat``.
        out_dir: where to write the ``.wasm``; default ``<module_dir>/../dist``.
        output: the file name; default `output_name(module_dir)`, e.g. ``chat.wasm``.

    Returns:
        The path of the built module.

    Raises:
        BuildError: the directory has no C sources, ziglang is not installed, or the
            compiler failed (the message includes its error output).
    """
    module_dir = module_dir.resolve()
    if not module_dir.is_dir():
        raise BuildError(f"cannot build {module_dir}: it is not a directory")
    sources = sorted(module_dir.glob("*.c"))
    if not sources:
        raise BuildError(
            f"cannot build {module_dir}: it has no .c files "
            f"(put the module's C sources there, e.g. {module_dir.name}.c)"
        )
    if importlib.util.find_spec("ziglang") is None:
        raise BuildError(
            f"cannot build {module_dir.name}: the zig compiler is not installed "
            "(pip install ziglang)"
        )
    name = output_name(module_dir) if output is None else check_output_name(output)
    out_dir = (module_dir.parent / "dist") if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name

    # Not ending in .wasm, so a watcher of out_dir ignores it until the rename.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{module_dir.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    command = zig_cc_command(sources, tmp, INCLUDE_DIR)
    logger.debug("building %s: %s", module_dir.name, " ".join(command))
    started = time.monotonic()
    try:
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(
                f"building {module_dir.name} timed out after {COMPILE_TIMEOUT_S:.0f} s"
            ) from exc
        except OSError as exc:
            raise BuildError(f"building {module_dir.name}: cannot run the compiler: {exc}") from exc
        if result.returncode != 0:
            names = ", ".join(source.name for source in sources)
            raise BuildError(
                f"building {module_dir.name} failed: zig cc exited with code "
                f"{result.returncode} compiling {names}:\n{_trim(result.stderr)}"
            )
        if tmp.stat().st_size == 0:
            raise BuildError(f"building {module_dir.name} failed: zig cc wrote an empty file")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if result.stderr.strip():
        logger.warning("compiler output for %s:\n%s", module_dir.name, _trim(result.stderr))
    logger.info(
        "built %s (%d bytes) in %.0f ms",
        target,
        target.stat().st_size,
        (time.monotonic() - started) * 1000,
    )
    return target
