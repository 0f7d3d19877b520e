"""Building one module folder: manifest, toolchain, the commands, the check, the rename.

`build_module(Path("modules/chat"), out_dir)` reads ``modules/chat/module.toml`` (or guesses
the language from the files), runs the language's build into a temporary file beside the
output, checks the result as the server's loader would (`tinywasm_wasi.build.check`), and
only then renames it into place: a server watching `out_dir` never sees a half-written
file or a module it would refuse. It returns a `BuildResult` and logs; it never prints.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tinywasm_wasi.build.check import check_module
from tinywasm_wasi.build.languages import TOOLCHAINS
from tinywasm_wasi.build.toolchain import (
    BuildContext,
    Step,
    Toolchain,
    ToolchainMissingError,
)
from tinywasm_wasi.config import DEFAULT_CACHE_DIR
from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.authoring import Finding
from tinywasm_wasi.policy.limits import LIMITS_FILE
from tinywasm_wasi.policy.manifest import (
    MANIFEST_FILE,
    Language,
    Manifest,
    ManifestError,
    check_output_name,
    expand,
    guess_language,
    parse_manifest,
)
from tinywasm_wasi.policy.rules import parse_file_name
from tinywasm_wasi.policy.wasm_sections import WasmFormatError, strip_debug

__all__ = [
    "BuildError",
    "BuildResult",
    "build_module",
    "find_sources",
    "load_manifest",
    "toolchain_for",
]

logger = logging.getLogger("tinywasm.build")

_OUTPUT_MAX_LINES = 40
_OUTPUT_MAX_CHARS = 4000


class BuildError(TinywasmError):
    """A module could not be built; the message says why and what to do.

    `output` holds the compiler's error output (file:line included), if it ran.
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A module that built and passed the loader's checks."""

    path: Path
    size: int
    language: Language
    duration_ms: float
    warnings: tuple[Finding, ...] = ()
    compiler_output: str = ""  # warnings the compiler printed, trimmed


def trim(text: str) -> str:
    """The last lines of a compiler's output, bounded in lines and characters."""
    lines = text.strip().splitlines()
    if len(lines) > _OUTPUT_MAX_LINES:
        skipped = len(lines) - _OUTPUT_MAX_LINES
        lines = [f"... ({skipped} earlier lines omitted)", *lines[-_OUTPUT_MAX_LINES:]]
    trimmed = "\n".join(lines)
    if len(trimmed) > _OUTPUT_MAX_CHARS:
        trimmed = "..." + trimmed[-_OUTPUT_MAX_CHARS:]
    return trimmed


def load_manifest(module_dir: Path) -> Manifest:
    """The folder's module.toml, or a manifest for the language its files show.

    Raises:
        BuildError: the manifest is unreadable or invalid, or there is none and the
            files show no language.
    """
    path = module_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        language = guess_language(p.name for p in module_dir.iterdir() if p.is_file())
        if language is None:
            raise BuildError(
                f"cannot build {module_dir}: it has no {MANIFEST_FILE} and no sources "
                "(create one with `tinywasm new NAME --lang c`, or add e.g. "
                f'{MANIFEST_FILE} with language = "c")'
            ) from None
        return Manifest(language=language, output=check_output_name(f"{module_dir.name}.wasm"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read {path}: {exc}") from None
    try:
        return parse_manifest(text, module_dir.name)
    except ManifestError as exc:
        raise BuildError(f"{path}: {exc}") from None


def toolchain_for(language: Language) -> Toolchain:
    """The toolchain that builds `language`.

    Raises:
        BuildError: this build has no toolchain for it yet.
    """
    found = TOOLCHAINS.get(language)
    if found is None:
        have = ", ".join(sorted(TOOLCHAINS))
        raise BuildError(f"this build cannot compile {language} yet (it can: {have})")
    return found


def find_sources(module_dir: Path, globs: tuple[str, ...]) -> tuple[Path, ...]:
    """The files `globs` match in `module_dir`, sorted, hidden ones left out."""
    found = {
        path
        for glob in globs
        for path in module_dir.glob(glob)
        if path.is_file() and not path.name.startswith(".")
    }
    return tuple(sorted(found))


def _steps(manifest: Manifest, chain: Toolchain, ctx: BuildContext) -> list[Step]:
    spec = manifest.build
    values = ctx.placeholders()
    sources = [str(s) for s in ctx.sources]
    if spec.command is not None:
        argv = expand([spec.command, *(spec.args or ())], values, sources)
        return [Step(argv)]
    if spec.args is not None:
        return [Step([*chain.find(), *expand(spec.args, values, sources)])]
    return chain.steps(ctx, tuple(expand(spec.flags, values, sources)))


def _run(step: Step, ctx: BuildContext, timeout: float, environ: Mapping[str, str]) -> str:
    """Run one step; return its output. Raises BuildError with the output if it fails."""
    cwd = step.cwd or ctx.module_dir
    argv = step.argv
    env: dict[str, str] | None = None  # None: this process's environment, as it is
    if environ:
        env = {**environ, **step.env}
    elif step.env:  # added on top of the inherited environment by env(1)
        argv = ["env", *(f"{key}={value}" for key, value in step.env.items()), *argv]
    logger.debug("building %s: %s (in %s)", ctx.name, " ".join(step.argv), cwd)
    program = Path(step.argv[0]).name
    if program.startswith("python") and step.argv[1:2] == ["-m"] and len(step.argv) > 2:
        program = step.argv[2]  # "python -m ziglang": name the compiler, not Python
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"building {ctx.name} timed out after {timeout:.0f} s running {program} "
            "(raise [build] timeout in module.toml if it needs longer)"
        ) from None
    except OSError as exc:
        raise BuildError(
            f"building {ctx.name}: cannot run {step.argv[0]}: {exc.strerror or exc}"
        ) from None
    output = "\n".join(part for part in (result.stdout.strip(), result.stderr.strip()) if part)
    if result.returncode != 0:
        trimmed = trim(output)
        raise BuildError(
            f"building {ctx.name} failed: {program} exited with code {result.returncode}"
            + (f":\n{trimmed}" if trimmed else ""),
            trimmed,
        )
    return output


def _strip(data: bytes, name: str) -> bytes:
    """The built bytes without DWARF; the name section stays, for backtraces."""
    try:
        return strip_debug(data)
    except WasmFormatError as exc:
        raise BuildError(f"building {name} wrote a file that is not WebAssembly: {exc}") from None


def _install(data: bytes, target: Path) -> Path:
    """Write `data` to `target` atomically: a temporary file, then a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not ending in .wasm, so a watcher of the folder ignores it until the rename.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


def _add_limits(out_dir: Path, name: str, manifest: Manifest, module_dir: Path) -> None:
    """Put the manifest's [limits] in the modules folder's limits.toml, where the server reads
    them, unless that file already has a table for the module (then say which one wins)."""
    assert manifest.limits is not None
    path = out_dir / LIMITS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read {path} to add {name}'s limits: {exc}") from None
    try:
        existing = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path} is not valid TOML ({exc}): fix it, then build again") from None
    wanted = dict(manifest.limits)
    if name in existing:
        if existing[name] != wanted:
            logger.warning(
                "%s has its own [%s] table, which the server uses; the [limits] in %s/%s "
                "are not applied (keep the limits in one of the two)",
                path,
                name,
                module_dir.name,
                MANIFEST_FILE,
            )
        return
    lines = [
        f"\n# from {module_dir.name}/{MANIFEST_FILE} (tinywasm build)",
        f"[{json.dumps(name)}]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in wanted.items()]
    _install((text.rstrip("\n") + "\n" + "\n".join(lines) + "\n").encode(), path)


def build_module(
    module_dir: Path,
    out_dir: Path,
    *,
    output: str | None = None,
    cache_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    check: bool = True,
) -> BuildResult:
    """Build the module in `module_dir` into ``<out_dir>/<output>`` and check it.

    Args:
        module_dir: the module's folder (sources and, usually, module.toml).
        out_dir: where the ``.wasm`` goes: the server's modules folder.
        output: the file name; default the manifest's ``output``, else ``<folder>.wasm``.
        cache_dir: kept between builds for toolchains that cache (default: the user's
            cache folder).
        environ: the variables the compiler runs with (plus what the toolchain adds, e.g.
            Go's GOOS); default: this process's environment.
        check: run the loader's checks before the rename (on unless testing the build).

    Raises:
        BuildError: no manifest and no sources, an invalid manifest, a missing
            compiler (the message names the install command), a failed compile (with the
            compiler's output), or a module the server would refuse (with the fix).
    """
    started = time.monotonic()
    environ = {} if environ is None else environ  # empty: inherit
    module_dir = module_dir.resolve()
    if not module_dir.is_dir():
        raise BuildError(f"cannot build {module_dir}: it is not a folder")
    manifest = load_manifest(module_dir)
    try:
        name = manifest.output if output is None else check_output_name(output)
    except ManifestError as exc:
        raise BuildError(str(exc)) from None
    chain = toolchain_for(manifest.language)
    sources = find_sources(module_dir, manifest.sources or chain.source_globs)
    if not sources:
        globs = ", ".join(manifest.sources or chain.source_globs)
        raise BuildError(f"cannot build {module_dir}: no source files match {globs}")
    with tempfile.TemporaryDirectory(prefix="tinywasm-build-") as scratch:
        # Named after the folder: the linker writes the file's name into the name section,
        # so a temporary name would make every build differ.
        built = Path(scratch) / "out" / f"{module_dir.name}.wasm"
        built.parent.mkdir()
        ctx = BuildContext(
            name=module_dir.name,
            module_dir=module_dir,
            sources=sources,
            output=built,
            scratch=Path(scratch),
            cache_dir=(cache_dir or DEFAULT_CACHE_DIR) / "build",
        )
        try:
            steps = _steps(manifest, chain, ctx)
        except ToolchainMissingError as exc:
            raise BuildError(str(exc)) from None
        outputs = [_run(step, ctx, manifest.build.timeout, environ) for step in steps]
        if not built.is_file() or built.stat().st_size == 0:
            raise BuildError(
                f"building {module_dir.name} failed: the build wrote nothing to {{output}} "
                "(a custom [build] command must write the module there)"
            )
        data = _strip(built.read_bytes(), module_dir.name)
    warnings = check_module(name, data, manifest) if check else []
    target = _install(data, out_dir / name)
    if manifest.limits:
        _add_limits(out_dir, parse_file_name(name).name, manifest, module_dir)
    compiler_output = trim("\n".join(o for o in outputs if o))
    if compiler_output:
        logger.warning("compiler output for %s:\n%s", module_dir.name, compiler_output)
    for finding in warnings:
        logger.warning("%s: %s", name, finding.message)
    duration_ms = (time.monotonic() - started) * 1000
    logger.info("built %s (%d bytes) in %.0f ms", target, len(data), duration_ms)
    return BuildResult(
        path=target,
        size=len(data),
        language=manifest.language,
        duration_ms=duration_ms,
        warnings=tuple(warnings),
        compiler_output=compiler_output,
    )
