"""`python -m cmd.tinywasm [build] ...` from the repository root: the `tinywasm` command.

The command itself is `tinywasm_wasi.cli`, which an install also offers as the
`tinywasm` console script; this package only runs it (see `__main__`).
"""
