"""``python -m tinywasm_wasi``: the `tinywasm` command (how the supervisor starts its workers)."""

import sys

from tinywasm_wasi.cli import main

sys.exit(main(prog="tinywasm"))
