"""The `tinywasm` command: `python -m cmd.tinywasm [build] ...` from the repository root."""
