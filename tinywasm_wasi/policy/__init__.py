"""Pure rules and data: no I/O, no asyncio, no threads."""
