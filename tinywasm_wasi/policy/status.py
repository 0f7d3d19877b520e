"""What the status API and /healthz say about a module: pure rules over its records.

`file_difference` says why the file on disk is not the version running;
`problems` lists what is wrong for /healthz (quarantined, refused, rolled back).
The web layer gathers the facts (the registry, the file's sha256) and calls these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tinywasm_wasi.policy.history import Outcome, Trigger, VersionRecord

__all__ = ["NATS_AWAY_DETAIL", "Problem", "ProblemKind", "file_difference", "problems"]


class ProblemKind(enum.StrEnum):
    QUARANTINED = "quarantined"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"
    NATS_AWAY = "nats_away"  # the server's, not a module's: `module` is ""


NATS_AWAY_DETAIL = (
    "the NATS server cannot be reached: delivery in this process goes on; messages for "
    "other processes are held (--nats-buffer), then dropped and counted; it reconnects "
    "by itself: check that nats-server runs and that --nats names it"
)


@dataclass(frozen=True, slots=True)
class Problem:
    module: str
    kind: ProblemKind
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"module": self.module, "problem": self.kind.value, "detail": self.detail}


def file_difference(
    name: str,
    running: str | None,
    on_disk: str | None,
    history: Sequence[VersionRecord],
    *,
    quarantined: bool,
    pin_reason: str | None = None,
) -> str | None:
    """Why the file's sha256 (`on_disk`) is not the running one, or None when they agree.

    `pin_reason` is the reason of the module's pin (a sticky rollback), if it has one.
    """
    if running == on_disk:
        return None
    last = history[-1] if history else None
    if quarantined:
        return "quarantined: the version that kept trapping is out of service until its retry"
    if pin_reason is not None and on_disk is not None:
        return (
            f"pinned after a rollback ({pin_reason}): the file's version is not served until "
            f"the file changes or POST /api/modules/{name}/unpin"
        )
    if on_disk is None:
        return "its file is gone: the module is unloaded once the watcher sees it"
    if running is None:
        if last is not None and last.sha256 == on_disk and last.outcome is Outcome.REFUSED:
            return f"refused: {last.error}"
        return "not loaded: the file has not been picked up yet"
    matching = [r for r in history if r.sha256 == on_disk]
    if matching:
        latest = matching[-1]
        if latest.outcome is Outcome.ROLLED_BACK:
            return f"rolled back: the file's version failed its probation ({latest.error})"
        if latest.outcome is Outcome.REFUSED:
            return f"refused: {latest.error}"
    if last is not None and last.trigger is Trigger.ROLLBACK:
        return "rolled back by request: the file still holds the newer version"
    return (
        "the file changed and has not been swapped in yet (the watcher is debouncing, or "
        f"--watch is off: POST /api/modules/{name}/reload)"
    )


def problems(
    quarantined: Mapping[str, str | None],
    refused: Mapping[str, str],
    last_records: Mapping[str, VersionRecord],
) -> list[Problem]:
    """What /healthz reports, one entry per module, sorted by name.

    `quarantined` maps names to their last error; `refused` names to the reason the
    latest file was refused; `last_records` each module's newest history record.
    """
    found: dict[str, Problem] = {}
    for name, record in last_records.items():
        if record.trigger is Trigger.ROLLBACK and record.outcome is Outcome.SWAPPED:
            found[name] = Problem(
                name,
                ProblemKind.ROLLED_BACK,
                "rolled back by request; its file holds another version",
            )
    for name, reason in refused.items():
        last = last_records.get(name)
        if last is not None and last.outcome is Outcome.ROLLED_BACK:
            found[name] = Problem(name, ProblemKind.ROLLED_BACK, reason)
        else:
            found[name] = Problem(name, ProblemKind.REFUSED, reason)
    for name, error in quarantined.items():
        found[name] = Problem(name, ProblemKind.QUARANTINED, error or "kept trapping")
    return [found[name] for name in sorted(found)]
