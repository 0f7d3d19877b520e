"""Pinned versions, kept in the state directory so a restart serves them too.

`pins.json` lists the pins (see `policy/pins.py`); each pinned version's bytes
sit beside it as ``pinned-<name>.wasm.bin`` (not a module file: the loader
never looks in the state directory). Without a usable state directory the pins
live in memory until the server stops.
"""

from __future__ import annotations

import hashlib
import json
import logging

from tinywasm_wasi.policy.pins import Pin, pins_from_json, pins_to_json
from tinywasm_wasi.supervisor.state_dir import StateDir

__all__ = ["PIN_FILE", "PinStore"]

log = logging.getLogger("tinywasm.pins")

PIN_FILE = "pins.json"


def _bytes_file(name: str) -> str:
    return f"pinned-{name}.wasm.bin"


class PinStore:
    """The pins of every module name, and each pinned version's bytes."""

    def __init__(self, state: StateDir | None) -> None:
        self._state = state
        self._pins: dict[str, Pin] = {}
        self._data: dict[str, bytes] = {}  # held only when there is no state directory

    def load(self) -> None:
        """Read the pins written before a restart; a pin whose bytes are gone is dropped."""
        if self._state is None:
            return
        raw = self._state.read(PIN_FILE)
        if raw is None:
            return
        try:
            pins = pins_from_json(json.loads(raw))
        except ValueError:
            log.warning("state file %s is not JSON: pins ignored", PIN_FILE)
            return
        self._pins = pins
        for name in list(pins):
            if self.data(name) is None:
                log.warning("pin of module %s dropped: its pinned bytes are missing", name)
                self.drop(name)

    def get(self, name: str) -> Pin | None:
        return self._pins.get(name)

    def all(self) -> dict[str, Pin]:
        return dict(self._pins)

    def data(self, name: str) -> bytes | None:
        """The pinned version's bytes, if they are still there and intact."""
        pin = self._pins.get(name)
        if pin is None:
            return None
        data = self._data.get(name)
        if data is None and self._state is not None:
            data = self._state.read(_bytes_file(name))
        if data is None or hashlib.sha256(data).hexdigest() != pin.sha256:
            return None
        return data

    def put(self, pin: Pin, data: bytes) -> None:
        self._pins[pin.name] = pin
        if self._state is None or not self._state.write(_bytes_file(pin.name), data):
            self._data[pin.name] = data
        self._save()
        log.warning(
            "module %s pinned to %s: %s; it stays on it across restarts until its file "
            "changes or POST /api/modules/%s/unpin",
            pin.name,
            pin.sha256[:12],
            pin.reason,
            pin.name,
        )

    def drop(self, name: str, why: str | None = None) -> bool:
        """Forget `name`'s pin; True if there was one."""
        pin = self._pins.pop(name, None)
        self._data.pop(name, None)
        if pin is None:
            return False
        if self._state is not None:
            self._state.remove(_bytes_file(name))
        self._save()
        if why:
            log.info("module %s unpinned: %s", name, why)
        return True

    def _save(self) -> None:
        if self._state is not None:
            self._state.write(PIN_FILE, json.dumps(pins_to_json(self._pins), indent=1).encode())
