"""How a failed module call becomes an HTTP answer (tinywasm_wasi.web.dispatch.failure_status).

The routes themselves are tested end to end in test_http_routes.py.
"""

from __future__ import annotations

import pytest

from tinywasm_wasi.exceptions import (
    GuestTrap,
    MailboxFullError,
    ModuleClosedError,
    TinywasmError,
    TrapCode,
)
from tinywasm_wasi.policy.http_abi import ResponseError
from tinywasm_wasi.web.dispatch import failure_status


@pytest.mark.parametrize(
    ("exc", "status", "reason", "retry_after"),
    [
        (
            GuestTrap("m", "handle", "x", TrapCode.INTERRUPT),
            504,
            "module 'm' did not answer within 250 ms",
            None,
        ),
        (
            GuestTrap(
                "m", "handle_http", "error while executing at wasm backtrace:", TrapCode.UNREACHABLE
            ),
            500,
            "module 'm' trapped in handle_http() [UNREACHABLE]",
            None,
        ),
        (
            GuestTrap("m", "handle", "returned 0x10, outside its memory (65536 bytes)", None),
            500,
            "module 'm' trapped in handle(): returned 0x10, outside its memory (65536 bytes)",
            None,
        ),
        (MailboxFullError("full"), 503, "module 'm' is busy: retry later", 1),
        (ModuleClosedError("closed"), 503, "module 'm' is being unloaded: retry later", 1),
        (
            ResponseError("not valid CBOR"),
            500,
            "module 'm' returned a malformed response: not valid CBOR",
            None,
        ),
        (TinywasmError("odd"), 500, "module 'm' failed: odd", None),
    ],
)
def test_failure_status(
    exc: TinywasmError, status: int, reason: str, retry_after: int | None
) -> None:
    failed = failure_status("m", exc, 0.25)
    assert (failed.status, failed.reason, failed.retry_after) == (status, reason, retry_after)
    assert "\n" not in failed.reason
