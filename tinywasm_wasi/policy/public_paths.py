"""Public answers name files relative to the modules folder, never by absolute path (pure).

Refusal reasons, history errors and a module's last error are built from
exceptions, and an exception from the file system carries the path it failed
on (``[Errno 21] Is a directory: '/srv/app/mods/y.wasm'``). Sent as it is, that
tells anyone who can reach the port where the server lives and who runs it.
`PublicPaths` rewrites such text before it leaves the server: the modules
folder becomes nothing (``y.wasm``) and its parent ``../`` (``../auth/rule.txt``,
the reference layout). The log keeps the full paths: it is for the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

__all__ = ["PublicPaths"]


class PublicPaths:
    """Rewrites paths in public text for one modules folder."""

    __slots__ = ("_prefixes",)

    def __init__(self, *folders: str) -> None:
        """Create one for the modules folder; give it as given and resolved, both are tried."""
        prefixes: dict[str, str] = {}
        for folder in folders:
            path = PurePosixPath(folder)
            if not path.is_absolute() or str(path) == "/":
                continue
            prefixes[str(path) + "/"] = ""
            if str(path.parent) != "/":
                prefixes[str(path.parent) + "/"] = "../"
        # Longest first, so the folder wins over its parent.
        self._prefixes = sorted(prefixes.items(), key=lambda item: -len(item[0]))

    def text(self, text: str) -> str:
        """`text` with every path under the modules folder (or its parent) made relative."""
        for prefix, shown in self._prefixes:
            if prefix in text:
                text = text.replace(prefix, shown)
        return text

    def json(self, data: Any) -> Any:
        """`data` (JSON-like: dicts, lists, strings...) with `text` applied to every string."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, Mapping):
            return {self.json(k): self.json(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.json(v) for v in data]
        return data
