"""The status the API and the dashboard show: health, one module's full record, the overview.

`StatusView` gathers facts from the module host and the hub and asks the pure
rules in `policy/status.py` what they mean: what is wrong (for /healthz), and
why a module's file differs from the version running (for
``GET /api/modules/{name}``). Reading a file to hash it happens in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bus.nats import NatsLink
from tinywasm_wasi.policy.history import iso_time
from tinywasm_wasi.policy.public_paths import PublicPaths
from tinywasm_wasi.policy.status import (
    NATS_AWAY_DETAIL,
    Problem,
    ProblemKind,
    file_difference,
    problems,
)
from tinywasm_wasi.supervisor.host import ModuleHost
from tinywasm_wasi.web.hub import Hub

__all__ = ["StatusView"]


class StatusView:
    """Read-only answers about the modules, built per request.

    The problem list is computed again only when the registry changed (a load,
    swap, refusal, quarantine or history record): /healthz is polled by load
    balancers, and walking every module's history per poll cost more than the
    rest of the answer.
    """

    def __init__(
        self,
        host: ModuleHost,
        hub: Hub,
        nats: NatsLink | None = None,
        fleet: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._host = host
        self._hub = hub
        self._nats = nats
        self._fleet = fleet  # with several workers: who is live and runs what
        self._problems_at = -1  # the registry's change count the cache holds for
        self._problems: dict[PublicPaths | None, list[dict[str, Any]]] = {}

    def problems(self) -> list[Problem]:
        host = self._host
        last = {name: h.records[-1] for name, h in host.histories.items() if h.records}
        return problems(
            {name: q.error for name, q in host.quarantined.items()}, dict(host.refused), last
        )

    def problems_json(self, public: PublicPaths | None = None) -> list[dict[str, Any]]:
        """`problems()` as JSON, passed through `public` (paths made relative); cached
        until the registry changes. The list is shared: do not change it."""
        changes = self._host.changes
        if changes != self._problems_at:
            self._problems.clear()
            self._problems_at = changes
        found = self._problems.get(public)
        if found is None:
            found = [p.to_json() for p in self.problems()]
            if public is not None:
                found = public.json(found)
            if len(self._problems) >= 4:  # one folder's PublicPaths at a time, in practice
                self._problems.clear()
            self._problems[public] = found
        return found

    def health(self, public: PublicPaths | None = None) -> dict[str, Any]:
        """`/healthz`: ok or degraded, and what is wrong.

        With `public`, the problems' texts went through it and every other value is a
        fixed word or a number: the answer needs no further rewriting.
        """
        found = self.problems_json(public)
        body: dict[str, Any] = {
            "status": "degraded" if found else "ok",
            "modules": len(self._host.live()),
            "clients": self._hub.clients,
            "problems": found,
        }
        nats = self._nats
        if nats is not None:
            # Local traffic still flows without NATS: degraded, still 200.
            body["nats"] = "connected" if nats.connected else "disconnected"
            if not nats.connected:
                body["status"] = "degraded"
                away = Problem("", ProblemKind.NATS_AWAY, NATS_AWAY_DETAIL).to_json()
                body["problems"] = [away, *found]
        return body

    def _with_pin(self, entry: dict[str, Any]) -> dict[str, Any]:
        pin = self._host.pins.get(str(entry.get("name")))
        entry["pinned"] = None if pin is None else pin.to_json()
        entry["file_differs"] = pin is not None
        run = self._host.view.canaries.get(str(entry.get("name")))
        entry["canary"] = None if run is None else run.to_json()
        return _running(entry)

    def overview(self) -> dict[str, Any]:
        """`/api/modules`: every module and quarantined one, refusals, problems, bus and hub."""
        host = self._host
        stats = host.bus.stats()
        history = self._hub.history_stats()
        return {
            "modules": [self._with_pin(m.snapshot()) for m in host.modules.values()]
            + [self._with_pin(q.to_json()) for q in host.quarantined.values()],
            "refused": dict(host.refused),
            "problems": self.problems_json(),
            "bus": {
                "published": stats.published,
                "delivered": stats.delivered,
                "dropped": stats.dropped,
                "subscriptions": stats.subscriptions,
            },
            "hub": asdict(self._hub.stats()),
            **({"nats": asdict(self._nats.stats())} if self._nats is not None else {}),
            **({"fleet": self._fleet()} if self._fleet is not None else {}),
            "history": None if history is None else asdict(history),
            "presence": asdict(self._hub.presence_stats()),
        }

    async def dashboard(self, history_limit: int = 100) -> dict[str, Any]:
        """The dashboard's picture: the overview, health, each module's file, the history."""
        host = self._host
        overview = self.overview()
        names = sorted({*host.modules, *host.quarantined, *host.refused})
        digests = await asyncio.to_thread(lambda: {n: host.file_digest(n) for n in names})
        files: dict[str, dict[str, Any]] = {}
        for name in names:
            digest = digests[name]
            file_name, file_sha = digest if digest is not None else (None, None)
            module = host.modules.get(name)
            quarantine = host.quarantined.get(name)
            running = (
                module.compiled.sha256
                if module is not None
                else quarantine.compiled.sha256
                if quarantine is not None
                else None
            )
            history = list(host.histories[name].records) if name in host.histories else []
            pin = host.pins.get(name)
            why = file_difference(
                name,
                running,
                file_sha,
                history,
                quarantined=quarantine is not None,
                pin_reason=None if pin is None else pin.reason,
            )
            files[name] = {
                "file": file_name,
                "file_sha256": file_sha,
                "file_differs": why is not None,
                "why": why,
            }
        records = [
            {"module": name, **r.to_json()} for name, h in host.histories.items() for r in h.records
        ]
        records.sort(key=lambda r: r["at_unix"], reverse=True)
        return {
            **overview,
            "health": self.health(),
            "files": files,
            "history": records[:history_limit],
        }

    def known(self, name: str) -> bool:
        host = self._host
        return (
            name in host.modules
            or name in host.quarantined
            or name in host.refused
            or name in host.histories
            or self._runs_elsewhere(name) is not None
        )

    def _runs_elsewhere(self, name: str) -> str | None:
        """The other worker whose heartbeats say it runs `name` (with --workers)."""
        placement = self._host.placement
        return None if placement is None else placement.elsewhere.get(name)

    async def module(self, name: str) -> dict[str, Any]:
        """`/api/modules/{name}`: the module's full record, its file and its history."""
        host = self._host
        module = host.modules.get(name)
        quarantine = host.quarantined.get(name)
        if module is not None:
            running: dict[str, Any] | None = _running(module.snapshot())
            running_sha: str | None = module.compiled.sha256
            state = module.state.value
        elif quarantine is not None:
            running = _running(quarantine.to_json())
            running_sha = None
            state = "quarantined"
        else:
            running, running_sha = None, None
            state = "refused" if name in host.refused else "unloaded"
        digest = await asyncio.to_thread(host.file_digest, name)
        file_name, file_sha = digest if digest is not None else (None, None)
        history = list(host.histories[name].records) if name in host.histories else []
        if quarantine is not None:
            running_sha = quarantine.compiled.sha256  # what runs again at its retry
        pin = host.pins.get(name)
        owner = self._runs_elsewhere(name) if running is None else None
        if owner is not None:  # with --workers: its file is fine, another worker runs it
            why: str | None = f"runs on worker {owner}, not on this one: see fleet in /api/modules"
        else:
            why = file_difference(
                name,
                running_sha,
                file_sha,
                history,
                quarantined=quarantine is not None,
                pin_reason=None if pin is None else pin.reason,
            )
        return {
            "name": name,
            "state": state,
            "runs_on": owner,
            "running_sha256": running_sha,
            "file": file_name,
            "file_sha256": file_sha,
            "file_differs": why is not None,
            "why": why,
            "refused": host.refused.get(name),
            "pinned": None if pin is None else pin.to_json(),
            "module": running,
            "history": [r.to_json() for r in history],
        }


def _running(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A module or quarantine snapshot with its times also in ISO 8601."""
    for key in ("loaded_at", "quarantined_at", "retry_at"):
        value = snapshot.get(key)
        if isinstance(value, int | float):
            snapshot[f"{key}_iso"] = iso_time(value)
    return snapshot
