"""Build guest modules from C sources with zig cc (`pip install ziglang`).

`build_module(Path("modules/chat"))` compiles every ``*.c`` in the directory into
``modules/dist/chat.wasm``. The output is written under a temporary name in the same
directory and renamed into place, so a server watching ``dist`` never loads a half-written
file. `main` is the ``python -m cmd.tinywasm build`` command.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinywasm_wasi.exceptions import TinywasmError

__all__ = ["INCLUDE_DIR", "BuildError", "build_module", "main", "zig_cc_command"]

logger = logging.getLogger("tinywasm.build")

INCLUDE_DIR = Path(__file__).resolve().parent.parent / "modules" / "include"

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


def build_module(module_dir: Path, out_dir: Path | None = None) -> Path:
    """Compile all ``*.c`` files in `module_dir` into ``<out_dir>/<module_dir name>.wasm``.

    Args:
        module_dir: directory holding the module's C sources, e.g. ``modules/chat``.
        out_dir: where to write the ``.wasm``; default ``<module_dir>/../dist``.

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
    out_dir = (module_dir.parent / "dist") if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{module_dir.name}.wasm"

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
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    if result.stderr.strip():
        logger.warning("compiler output for %s:\n%s", module_dir.name, _trim(result.stderr))
    logger.info(
        "built %s (%d bytes) in %.0f ms",
        output,
        output.stat().st_size,
        (time.monotonic() - started) * 1000,
    )
    return output


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> int:
    """Run ``python -m cmd.tinywasm build <module-dir>... [-o OUT_DIR]``; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m cmd.tinywasm build",
        description="Compile C guest modules to WebAssembly with zig cc.",
    )
    parser.add_argument(
        "module_dirs", nargs="+", type=Path, metavar="module-dir", help="e.g. modules/chat"
    )
    parser.add_argument(
        "-o",
        "--out-dir",
        type=Path,
        default=None,
        help="output directory (default: dist/ next to each module directory)",
    )
    args = parser.parse_args(argv)
    for module_dir in args.module_dirs:
        try:
            output = build_module(module_dir, args.out_dir)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"built {_display(output)} ({output.stat().st_size} bytes)")
    return 0
