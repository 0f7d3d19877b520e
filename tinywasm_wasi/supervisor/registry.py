"""Who runs under which name: live versions, quarantined ones, refusals and history.

The supervisor writes it; the web layer reads it through `RegistryView`, which
offers read-only mappings and lookups and nothing that changes a module.

History records are also appended, one JSON line each, to `history.jsonl` in the
state directory (`StateDir`), and read back at start-up (`restore_history`), so
the history survives a restart; the file is then rewritten with what is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

from tinywasm_wasi.policy.histogram import SWAP_BUCKETS, Histogram
from tinywasm_wasi.policy.history import ModuleHistory, Outcome, VersionRecord
from tinywasm_wasi.policy.quarantine import Quarantine
from tinywasm_wasi.runtime.engine import CompiledModule
from tinywasm_wasi.runtime.module import ModuleState, WasmModule
from tinywasm_wasi.supervisor.canary import CanaryRun
from tinywasm_wasi.supervisor.state_dir import StateDir

__all__ = ["HISTORY_FILE", "Registry", "RegistryView"]

log = logging.getLogger("tinywasm.registry")

HISTORY_FILE = "history.jsonl"


class RegistryView:
    """Read-only access for the web layer and the status routes."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.modules: Mapping[str, WasmModule] = MappingProxyType(registry._modules)
        self.quarantined: Mapping[str, Quarantine[CompiledModule]] = MappingProxyType(
            registry._quarantined
        )
        self.refused: Mapping[str, str] = MappingProxyType(registry._refused)
        self.histories: Mapping[str, ModuleHistory] = MappingProxyType(registry._histories)
        self.canaries: Mapping[str, CanaryRun] = MappingProxyType(registry._canaries)
        # Every attempt counted by (name, outcome), and swap durations by name, for /metrics:
        # unlike the history, these are never trimmed.
        self.outcomes: Mapping[tuple[str, Outcome], int] = MappingProxyType(registry._outcomes)
        self.swap_seconds: Mapping[str, Histogram] = MappingProxyType(registry._swap_seconds)
        self._middlewares: tuple[int, tuple[WasmModule, ...]] | None = None  # at a change count

    @property
    def changes(self) -> int:
        """A count that grows on every change to the modules, refusals, quarantines or
        history: what was computed from them at the same count still holds."""
        return self._registry._changes

    def middlewares(self) -> list[WasmModule]:
        """Live middleware modules, in the order they run (see `policy/rules.py`).

        Asked on every HTTP request: found again only after a change to the modules.
        """
        changes = self._registry._changes
        cached = self._middlewares
        if cached is None or cached[0] != changes:
            found = [(m.file.order_key, m) for m in self.modules.values() if m.file and m.file.rule]
            ordered = tuple(m for _key, m in sorted(found, key=lambda pair: pair[0]))
            cached = self._middlewares = (changes, ordered)
        return list(cached[1])

    def live(self) -> list[WasmModule]:
        return [m for m in self.modules.values() if m.state is ModuleState.LIVE]


class Registry:
    """The mutable state behind `RegistryView`; changed only by the supervisor."""

    def __init__(self, state: StateDir | None = None) -> None:
        self._state = state
        # Called with (name, record) after each new record (the dashboard's feed).
        self.listeners: list[Callable[[str, VersionRecord], None]] = []
        self._modules: dict[str, WasmModule] = {}
        self._quarantined: dict[str, Quarantine[CompiledModule]] = {}
        # The last quarantine of a module back in service: a relapse soon after doubles
        # the backoff (see `policy/quarantine.py`).
        self._last_quarantine: dict[str, Quarantine[CompiledModule]] = {}
        self._refused: dict[str, str] = {}
        self._histories: dict[str, ModuleHistory] = {}
        self._canaries: dict[str, CanaryRun] = {}
        self._outcomes: dict[tuple[str, Outcome], int] = {}
        self._swap_seconds: dict[str, Histogram] = {}
        self._changes = 0  # see RegistryView.changes
        self.view = RegistryView(self)

    # -- live versions -----------------------------------------------------------------------

    def put(self, module: WasmModule) -> None:
        """`module` serves its name: a refusal recorded before is no longer current."""
        self._changes += 1
        self._modules[module.name] = module
        self._refused.pop(module.name, None)

    def pop(self, name: str) -> WasmModule:
        self._changes += 1
        return self._modules.pop(name)

    def renamed(self, name: str) -> None:
        """Live module `name` was renamed in place: its rule or its order changed."""
        self._changes += 1

    def clear(self) -> None:
        self._changes += 1
        self._modules.clear()

    # -- canaries -----------------------------------------------------------------------------

    def start_canary(self, name: str, run: CanaryRun) -> None:
        self._canaries[name] = run

    def end_canary(self, name: str) -> CanaryRun | None:
        return self._canaries.pop(name, None)

    # -- refusals ------------------------------------------------------------------------------

    def refuse(self, name: str, reason: str) -> None:
        self._changes += 1
        self._refused[name] = reason

    def accept(self, name: str) -> None:
        self._changes += 1
        self._refused.pop(name, None)

    # -- quarantine ----------------------------------------------------------------------------

    def quarantine(self, name: str, entry: Quarantine[CompiledModule]) -> None:
        self._changes += 1
        self._quarantined[name] = entry

    def previous_quarantine(self, name: str) -> Quarantine[CompiledModule] | None:
        """The current quarantine, or the last one if the module is back in service."""
        return self._quarantined.get(name) or self._last_quarantine.get(name)

    def end_quarantine(self, name: str, *, remember: bool) -> None:
        """Take `name` off the quarantine list; `remember` keeps it to judge a relapse."""
        self._changes += 1
        entry = self._quarantined.pop(name, None)
        if remember and entry is not None:
            self._last_quarantine[name] = entry

    # -- history -------------------------------------------------------------------------------

    def record(self, name: str, record: VersionRecord, data: bytes | None = None) -> None:
        self._changes += 1
        self._histories.setdefault(name, ModuleHistory()).add(record, data)
        key = (name, record.outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1
        if record.outcome in (Outcome.SWAPPED, Outcome.TIMED_OUT_DRAINING, Outcome.ROLLED_BACK):
            seconds = self._swap_seconds.setdefault(name, Histogram(SWAP_BUCKETS))
            seconds.observe(record.duration_ms / 1000)
        if self._state is not None:
            self._state.append_line(HISTORY_FILE, {"module": name, **record.to_json()})
        for listener in self.listeners:
            listener(name, record)

    def restore_history(self) -> int:
        """Read the history a previous run left in the state directory; return the count.

        Damaged lines are skipped with a warning. The file is rewritten with what was
        kept (each module's last records), so it does not grow without bound.
        """
        state = self._state
        if state is None:
            return 0
        self._changes += 1
        count = 0
        for line in state.read_lines(HISTORY_FILE):
            name = line.get("module")
            try:
                if not isinstance(name, str):
                    raise ValueError("no module name")
                record = VersionRecord.from_json(line)
            except ValueError as exc:
                log.warning("%s: a line is not a history record (%s); skipped", HISTORY_FILE, exc)
                continue
            self._histories.setdefault(name, ModuleHistory()).add(record)
            count += 1
        if count:
            kept = [
                json_line({"module": name, **r.to_json()})
                for name, history in self._histories.items()
                for r in history.records
            ]
            state.write(HISTORY_FILE, "".join(kept).encode("utf-8"))
        return count


def json_line(record: Mapping[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
