"""One module version in wasmtime: engine, guest, host functions, mailbox and its thread."""
