"""The module author's commands: ``tinywasm build``, ``tinywasm new`` and ``tinywasm dev``.

Part of the command line (it reads the environment and prints, as `tinywasm_wasi.cli`
does); `tinywasm_wasi.cli.main` hands these sub-commands here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tinywasm_wasi.config import DEFAULT_MODULES_DIR

__all__ = ["build", "dev", "find_module_folders", "modules_dir", "new"]

MODULES_DIR_ENV = "TINYWASM_MODULES_DIR"


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


OWN_MODULES_DIR = Path("dist")  # an author's own modules folder, in the current folder


def modules_dir(flag: Path | None, env: Mapping[str, str], sources: Sequence[Path] = ()) -> Path:
    """Where built modules go: the flag, else TINYWASM_MODULES_DIR, else a default.

    The default is the bundled examples folder only for the bundled examples' own
    sources (``modules/chat`` in a checkout); an author's module goes to ``./dist``,
    never into the package (site-packages) or the checkout's examples.
    """
    if flag is not None:
        return flag
    value = env.get(MODULES_DIR_ENV)
    if value:
        return Path(value)
    bundled = DEFAULT_MODULES_DIR.parent
    if sources and all(s.resolve().is_relative_to(bundled) for s in sources):
        return DEFAULT_MODULES_DIR
    return OWN_MODULES_DIR


def _modules_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modules-dir",
        "-o",
        "--out-dir",
        dest="modules_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"the server's modules folder, where the .wasm goes [env {MODULES_DIR_ENV}; "
        f"default: ./{OWN_MODULES_DIR}, or {_display(DEFAULT_MODULES_DIR)} for the bundled "
        "examples' sources]",
    )


def build(argv: list[str], env: Mapping[str, str], prog: str = "tinywasm build") -> int:
    """Run ``tinywasm build <module-dir>... [--modules-dir DIR] [-n NAME]``; the exit status."""
    from tinywasm_wasi.build import MANIFEST_FILE, BuildError, build_module
    from tinywasm_wasi.cli import default_cache_dir

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compile module folders (C, C++, Zig, Rust, Go, AssemblyScript, WAT) "
        "to WebAssembly, check each as the server would load it, and write it into the "
        "server's modules folder, where a running server swaps it in.",
    )
    parser.add_argument(
        "module_dirs", nargs="+", type=Path, metavar="module-dir", help="e.g. modules/chat"
    )
    _modules_dir_option(parser)
    parser.add_argument(
        "-n",
        "--output-name",
        default=None,
        metavar="FILE",
        help="output file name, e.g. '20-auth@[users].wasm' (one module only; default: "
        f"'output' in the module's {MANIFEST_FILE}, else <module-dir name>.wasm)",
    )
    args = parser.parse_args(argv)
    if args.output_name is not None and len(args.module_dirs) > 1:
        parser.error("--output-name names one output: give one module directory")
    out_dir = modules_dir(args.modules_dir, env, args.module_dirs)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    status = 0
    for module_dir in args.module_dirs:
        print(f"building {module_dir} into {_display(out_dir)}/ ...", file=sys.stderr, flush=True)
        try:
            result = build_module(
                module_dir,
                out_dir,
                output=args.output_name,
                cache_dir=default_cache_dir(env),
                environ=env,
            )
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if result.compiler_output:
            print(result.compiler_output, file=sys.stderr)
        for finding in result.warnings:
            print(f"warning: {result.path.name}: {finding.message}", file=sys.stderr)
        print(
            f"built {_display(result.path)} ({result.size} bytes, {result.language}, "
            f"{result.duration_ms:.0f} ms)"
        )
    return status


def new(argv: list[str], env: Mapping[str, str], prog: str = "tinywasm new") -> int:
    """Run ``tinywasm new <name> --lang LANGUAGE [--dir PARENT]``; the exit status."""
    from tinywasm_wasi.build import BuildError, Language
    from tinywasm_wasi.build.scaffold import scaffold

    languages = [lang.value for lang in Language]
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Create a module folder: its manifest (module.toml), a source file that "
        "builds and loads as it is, and a short README.",
    )
    parser.add_argument("name", help="the module's name, e.g. hello")
    parser.add_argument("--lang", "-l", required=True, choices=languages, help="its language")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        metavar="PARENT",
        help="where to create the folder <name> (default: here)",
    )
    args = parser.parse_args(argv)
    try:
        folder = scaffold(args.name, Language(args.lang), args.dir)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = _display(folder)
    print(f"created {shown}/ ({args.lang}): {', '.join(sorted(p.name for p in folder.iterdir()))}")
    print(f"next: tinywasm dev {shown}    (or: tinywasm build {shown})")
    return 0


def find_module_folders(here: Path) -> list[Path]:
    """`here` if it holds a module.toml, else its subfolders (or modules/'s) that do."""
    from tinywasm_wasi.build import MANIFEST_FILE

    if (here / MANIFEST_FILE).is_file():
        return [here]
    for parent in (here, here / "modules"):
        found = sorted(p.parent for p in parent.glob(f"*/{MANIFEST_FILE}"))
        if found:
            return found
    return []


def dev(argv: list[str], env: Mapping[str, str], prog: str = "tinywasm dev") -> int:
    """Run ``tinywasm dev [MODULE-DIR...] [server flags]``: build, serve, rebuild on save."""
    import dataclasses

    from tinywasm_wasi.build import BuildError, build_module
    from tinywasm_wasi.cli import default_cache_dir, parse_config, serve_config
    from tinywasm_wasi.logs import configure_logging

    if argv[:1] in (["-h"], ["--help"]):
        print(
            f"usage: {prog} [MODULE-DIR...] [server flags, see tinywasm --help]\n\n"
            "Build each module folder into the modules folder, serve them with the wasi\n"
            "server, and rebuild a module when its sources change (module.toml's watch\n"
            "globs); the server hot-swaps the new build. A build error leaves the running\n"
            "version serving; it is logged and sent to browsers on topic $sys.build.\n"
            "Without MODULE-DIR: this folder if it has a module.toml, else its subfolders\n"
            "(or modules/'s) that have one. Browsers may publish to each module's name."
        )
        return 0
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    folders = [Path(a) for a in argv[:split]] or find_module_folders(Path.cwd())
    if not folders:
        print(
            "error: no module folders here: give one (tinywasm dev hello), or create one "
            "with: tinywasm new hello --lang c",
            file=sys.stderr,
        )
        return 2
    for folder in folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 2
    environ = {**env, "TINYWASM_SERVER": "wasi"}
    server_args = argv[split:]
    given = any(a == "--modules-dir" or a.startswith("--modules-dir=") for a in server_args)
    if not given and not env.get(MODULES_DIR_ENV):
        server_args = ["--modules-dir", str(modules_dir(None, env, folders)), *server_args]
    config = parse_config(server_args, environ, prog)
    names = tuple(f.resolve().name for f in folders)
    config = dataclasses.replace(
        config,
        watch=True,
        workers=1,  # one process builds and watches; N workers would race on every save
        watch_sources=tuple(f.resolve() for f in folders),
        ws_inbound=tuple(dict.fromkeys((*config.ws_inbound, *names))),
    )
    configure_logging(config.log_level, config.log_format)
    config.modules_dir.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        print(
            f"building {folder} into {_display(config.modules_dir)}/ ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            result = build_module(
                folder, config.modules_dir, cache_dir=default_cache_dir(env), environ=env
            )
        except BuildError as exc:
            print(f"error: {exc}\n(fix it and save: {folder.name} builds again)", file=sys.stderr)
            continue
        print(f"built {_display(result.path)} ({result.size} bytes, {result.duration_ms:.0f} ms)")
    return serve_config(config, "wasi", environ)
