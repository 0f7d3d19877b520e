"""Who runs under which name: live versions, quarantined ones, refusals and history.

The supervisor writes it; the web layer reads it through `RegistryView`, which
offers read-only mappings and lookups and nothing that changes a module.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tinywasm_wasi.policy.history import ModuleHistory, VersionRecord
from tinywasm_wasi.policy.quarantine import Quarantine
from tinywasm_wasi.runtime.engine import CompiledModule
from tinywasm_wasi.runtime.module import ModuleState, WasmModule
from tinywasm_wasi.supervisor.canary import CanaryRun

__all__ = ["Registry", "RegistryView"]


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

    def middlewares(self) -> list[WasmModule]:
        """Live middleware modules, in the order they run (see `policy/rules.py`)."""
        found = [(m.file.order_key, m) for m in self.modules.values() if m.file and m.file.rule]
        return [m for _key, m in sorted(found, key=lambda pair: pair[0])]

    def live(self) -> list[WasmModule]:
        return [m for m in self.modules.values() if m.state is ModuleState.LIVE]


class Registry:
    """The mutable state behind `RegistryView`; changed only by the supervisor."""

    def __init__(self) -> None:
        self._modules: dict[str, WasmModule] = {}
        self._quarantined: dict[str, Quarantine[CompiledModule]] = {}
        # The last quarantine of a module back in service: a relapse soon after doubles
        # the backoff (see `policy/quarantine.py`).
        self._last_quarantine: dict[str, Quarantine[CompiledModule]] = {}
        self._refused: dict[str, str] = {}
        self._histories: dict[str, ModuleHistory] = {}
        self._canaries: dict[str, CanaryRun] = {}
        self.view = RegistryView(self)

    # -- live versions -----------------------------------------------------------------------

    def put(self, module: WasmModule) -> None:
        self._modules[module.name] = module

    def pop(self, name: str) -> WasmModule:
        return self._modules.pop(name)

    def clear(self) -> None:
        self._modules.clear()

    # -- canaries -----------------------------------------------------------------------------

    def start_canary(self, name: str, run: CanaryRun) -> None:
        self._canaries[name] = run

    def end_canary(self, name: str) -> CanaryRun | None:
        return self._canaries.pop(name, None)

    # -- refusals ------------------------------------------------------------------------------

    def refuse(self, name: str, reason: str) -> None:
        self._refused[name] = reason

    def accept(self, name: str) -> None:
        self._refused.pop(name, None)

    # -- quarantine ----------------------------------------------------------------------------

    def quarantine(self, name: str, entry: Quarantine[CompiledModule]) -> None:
        self._quarantined[name] = entry

    def previous_quarantine(self, name: str) -> Quarantine[CompiledModule] | None:
        """The current quarantine, or the last one if the module is back in service."""
        return self._quarantined.get(name) or self._last_quarantine.get(name)

    def end_quarantine(self, name: str, *, remember: bool) -> None:
        """Take `name` off the quarantine list; `remember` keeps it to judge a relapse."""
        entry = self._quarantined.pop(name, None)
        if remember and entry is not None:
            self._last_quarantine[name] = entry

    # -- history -------------------------------------------------------------------------------

    def record(self, name: str, record: VersionRecord, data: bytes | None = None) -> None:
        self._histories.setdefault(name, ModuleHistory()).add(record, data)
