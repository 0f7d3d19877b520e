"""The set of running modules: loading a folder, swapping, quarantine, watching."""
