"""The client side of ``tinywasm deploy``: send a module's bytes to a running server.

Plain `urllib`, so the command needs nothing beyond the standard library. It
returns what the server answered; the CLI prints it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["DeployAnswer", "DeployClientError", "send"]

TIMEOUT = 120.0  # seconds: a swap waits for the old version to drain and for probation


class DeployClientError(Exception):
    """The server could not be reached; the message says where and why."""


@dataclass(frozen=True, slots=True)
class DeployAnswer:
    status: int
    body: dict[str, Any] | None  # the JSON answer, when there is one
    text: str  # the answer as text (an error's explanation)

    @property
    def ok(self) -> bool:
        return self.status == 200


def send(
    server: str,
    name: str,
    data: bytes | None,
    *,
    token: str | None = None,
    timeout: float = TIMEOUT,
) -> DeployAnswer:
    """PUT `data` to ``<server>/api/modules/<name>`` (None: DELETE it) and return the answer.

    Raises:
        DeployClientError: the URL is not http(s), or the server cannot be reached.
    """
    base = server.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise DeployClientError(f"--server {server!r} must be an http:// or https:// URL")
    url = f"{base}/api/modules/{urllib.parse.quote(name, safe='')}"
    headers = {"Content-Type": "application/wasm"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=data, method="PUT" if data is not None else "DELETE", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return _answer(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return _answer(exc.code, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeployClientError(f"cannot reach {base}: {reason}") from None


def _answer(status: int, raw: bytes) -> DeployAnswer:
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return DeployAnswer(status, body if isinstance(body, dict) else None, text)
