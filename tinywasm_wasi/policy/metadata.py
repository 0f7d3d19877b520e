"""A module's own description (`get_metadata`), parsed and checked as pure functions.

A module may export ``get_metadata() -> i64``: ``ptr << 32 | len`` of a JSON object
or a CBOR map with these keys, all optional:

==============  =================================================================
``name``        the module name; must equal the name it loads under
``version``     text, at most 64 characters (e.g. ``"1.4.2"``)
``description`` text, at most 1024 characters
``publishes``   list of topics it publishes (text, at most 64 of 255 bytes each)
``subscribes``  list of topic patterns it subscribes to (same bounds)
``routes``      list of HTTP routes it answers under ``/m/<name>`` (same bounds)
==============  =================================================================

Any other key, a wrong type or an oversized value refuses the version, with a
message naming the key and what it must be.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import cbor2

from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.names import ModuleNameError, check_module_name

__all__ = ["MAX_METADATA", "Metadata", "MetadataError", "parse_metadata"]

MAX_METADATA = 64 * 1024  # bytes get_metadata may return
MAX_TEXT = {"version": 64, "description": 1024}
MAX_LIST, MAX_ITEM = 64, 255
LISTS = ("publishes", "subscribes", "routes")
KEYS = ("name", "version", "description", *LISTS)


class MetadataError(TinywasmError, ValueError):
    """get_metadata returned something that is not valid metadata; the message says what."""


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str | None = None
    version: str | None = None
    description: str | None = None
    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "publishes": list(self.publishes),
            "subscribes": list(self.subscribes),
            "routes": list(self.routes),
        }


def _decode(raw: bytes) -> object:
    if raw.lstrip()[:1] in (b"{", b"[") or not raw.strip():  # JSON; CBOR maps start 0xa0-0xbf
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MetadataError(f"get_metadata returned invalid JSON: {exc}") from None
    try:
        stream = io.BytesIO(raw)
        value = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # cbor2 raises several types for damaged input
        raise MetadataError(f"get_metadata returned neither JSON nor valid CBOR: {exc}") from None
    if stream.tell() != len(raw):
        raise MetadataError("get_metadata returned CBOR with bytes after the map")
    return value


def _text(key: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"metadata {key!r} must be text, not {type(value).__name__}")
    if len(value) > limit:
        raise MetadataError(f"metadata {key!r} is over {limit} characters")
    return value


def _list(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MetadataError(f"metadata {key!r} must be a list of text, not {type(value).__name__}")
    if len(value) > MAX_LIST:
        raise MetadataError(f"metadata {key!r} has over {MAX_LIST} entries")
    items = tuple(_text(f"{key}[{i}]", v, MAX_ITEM) for i, v in enumerate(value))
    if any(not item for item in items):
        raise MetadataError(f"metadata {key!r} has an empty entry")
    return items


def parse_metadata(raw: bytes, module: str) -> Metadata:
    """Check `raw` (what get_metadata returned) for module `module`.

    Raises:
        MetadataError: not a JSON object or CBOR map, an unknown key, a value of the
            wrong type or size, or a name other than `module`.
    """
    if not raw:
        raise MetadataError("get_metadata returned nothing (length 0)")
    if len(raw) > MAX_METADATA:
        raise MetadataError(f"get_metadata returned over {MAX_METADATA} bytes")
    value = _decode(raw)
    if not isinstance(value, dict):
        raise MetadataError(f"metadata must be a map, not {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise MetadataError(
            f"unknown metadata key(s) {', '.join(unknown)}: the keys are {', '.join(KEYS)}"
        )
    name = None
    if "name" in value:
        name = _text("name", value["name"], 128)
        try:
            check_module_name(name)
        except ModuleNameError as exc:
            raise MetadataError(f"metadata 'name': {exc}") from None
        if name != module:
            raise MetadataError(
                f"its metadata names it {name!r}, but it loads as {module!r}: rename the file "
                "or fix the name in get_metadata"
            )
    return Metadata(
        name=name,
        version=_text("version", value["version"], MAX_TEXT["version"])
        if "version" in value
        else None,
        description=_text("description", value["description"], MAX_TEXT["description"])
        if "description" in value
        else None,
        **{key: _list(key, value[key]) for key in LISTS if key in value},
    )
