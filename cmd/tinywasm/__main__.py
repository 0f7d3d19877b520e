from tinywasm_wasi.cli import main

raise SystemExit(main(prog="python -m cmd.tinywasm"))
