"""``python -m tinywasm_wasi.wat2wasm -o OUT FILE.wat``: the WAT toolchain's compiler.

Runs as its own process, like every language's compiler, so the build treats WAT the
same way; errors go to stderr as ``FILE:LINE:COLUMN: message``, the status is 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["main"]

_WHERE = re.compile(r"--> <anon>:(\d+):(\d+)")


def main(argv: list[str] | None = None) -> int:
    """Assemble one .wat file; return the exit status."""
    import wasmtime

    parser = argparse.ArgumentParser(prog="wat2wasm")
    parser.add_argument("-o", dest="output", type=Path, required=True)
    parser.add_argument("sources", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if len(args.sources) != 1:
        names = ", ".join(s.name for s in args.sources)
        print(f"error: a WAT module is one file, found {names}", file=sys.stderr)
        return 1
    source: Path = args.sources[0]
    try:
        text = source.read_text(encoding="utf-8")
        binary = wasmtime.wat2wasm(text)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{source}: error: {exc}", file=sys.stderr)
        return 1
    except wasmtime.WasmtimeError as exc:
        message = str(exc).strip()
        where = _WHERE.search(message)
        prefix = f"{source}:{where[1]}:{where[2]}" if where else str(source)
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 1
    args.output.write_bytes(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
