"""``tinywasm restart --rolling``: ask a running supervisor for a rolling restart, over NATS.

The supervisor writes ``supervisor.json`` (pid, NATS URL, port, workers, node) in
its state folder; this reads it, sends a request on ``tw.ctl.restart.<node>`` (so
only this machine's supervisor answers, in a fleet of several) and waits for the
report: which workers were replaced, and how long each took.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from tinywasm_wasi.cluster.supervisor import READY_TIMEOUT, STATUS_FILE, restart_subject
from tinywasm_wasi.exceptions import TinywasmError

__all__ = ["RestartError", "ask_rolling_restart"]


class RestartError(TinywasmError, RuntimeError):
    """No supervisor could be asked, or it did not finish the restart."""


def supervisor_status(state_path: Path) -> dict[str, Any]:
    """What the supervisor wrote about itself.

    Raises:
        RestartError: no supervisor.json there (none runs with this state folder).
    """
    path = state_path / STATUS_FILE
    try:
        status: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RestartError(
            f"no running supervisor found ({path}: {exc}); start the server with --workers N "
            "and give restart the same --modules-dir / --state-dir"
        ) from None
    return status


async def ask_rolling_restart(state_path: Path) -> dict[str, Any]:
    """Ask the supervisor of `state_path` for a rolling restart; its report when done.

    Raises:
        RestartError: no supervisor, NATS unreachable, or the restart failed.
    """
    status = supervisor_status(state_path)
    workers = int(status.get("workers", 1))
    try:
        nc = await nats.connect(str(status["nats"]).split(","), allow_reconnect=False)
    except (TimeoutError, NatsError, OSError, KeyError) as exc:
        raise RestartError(f"cannot reach the supervisor's NATS server: {exc}") from None
    try:
        subject = restart_subject(str(status.get("node", "")))
        msg = await nc.request(subject, b"rolling", timeout=workers * READY_TIMEOUT + 60)
    except NoRespondersError:
        raise RestartError(
            f"the supervisor (pid {status.get('pid')}) does not answer restart requests"
        ) from None
    except NatsTimeoutError:
        raise RestartError("the rolling restart did not finish in time") from None
    finally:
        await nc.close()
    report: dict[str, Any] = json.loads(msg.data)
    if not report.get("ok"):
        raise RestartError(f"the rolling restart failed: {report.get('error')}")
    return report
