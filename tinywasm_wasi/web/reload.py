"""What SIGHUP reloads without a restart: the inbound list and the token public key.

- ``--ws-inbound-file``: the topic patterns browsers may publish to (format in
  `tinywasm_wasi.policy.inbound`). Without that file the list comes from
  ``--ws-inbound``, which a running process cannot re-read, so it stays.
- ``--auth-public-key``: the PEM file that verifies connection tokens, so a key
  can be rotated. New connections are checked with the new key; open ones keep
  the token they were admitted with (until its ``exp``).

Each file is read and checked in full before it replaces what is in force: a
file that cannot be read or holds a mistake changes nothing, and the log says
why and what stays. Everything else comes from flags and variables fixed at
start and needs a restart; modules reload themselves when their files change.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tinywasm_wasi.policy.inbound import MAX_INBOUND_FILE, InboundFileError, parse_inbound_file
from tinywasm_wasi.policy.tokens import TokenVerifier
from tinywasm_wasi.web.hub import Hub

__all__ = ["Reloader", "read_inbound_file", "read_public_key"]

log = logging.getLogger("tinywasm.reload")


def read_inbound_file(path: Path) -> tuple[str, ...]:
    """The patterns in the ``--ws-inbound-file`` at `path`.

    Raises:
        ValueError: the file cannot be read, is too big, or holds a bad pattern;
            the message names the file (and the line).
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_INBOUND_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the inbound file {path}: {exc.strerror or exc}") from None
    try:
        return parse_inbound_file(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"inbound file {path} is not UTF-8 text") from None
    except InboundFileError as exc:
        raise ValueError(f"inbound file {path}: {exc}") from None


def read_public_key(path: Path) -> TokenVerifier:
    """A token verifier for the PEM public key in the file at `path`.

    Raises:
        ValueError: the file cannot be read or holds no usable key.
    """
    try:
        pem = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the auth public key {path}: {exc}") from None
    try:
        return TokenVerifier(public_key=pem)
    except ValueError as exc:
        raise ValueError(f"auth public key {path}: {exc}") from None


class Reloader:
    """Reloads what can change without a restart into a running hub (on SIGHUP)."""

    def __init__(
        self, hub: Hub, *, inbound_file: Path | None, public_key: Path | None = None
    ) -> None:
        self._hub = hub
        self._inbound_file = inbound_file
        self._public_key = public_key
        self.reloads = 0  # SIGHUPs handled
        self.failures = 0  # files refused (the old value stayed)

    def reload(self) -> None:
        """Read every reloadable file again; keep what was in force for one that fails."""
        self.reloads += 1
        log.info("SIGHUP: reloading the inbound list and the auth public key")
        self._reload_inbound()
        self._reload_public_key()

    def _reload_inbound(self) -> None:
        hub = self._hub
        if self._inbound_file is None:
            log.info(
                "SIGHUP: the inbound list comes from --ws-inbound, not a file: it stays "
                "%s (use --ws-inbound-file to reload it)",
                ", ".join(hub.inbound) or "(none)",
            )
            return
        try:
            patterns = read_inbound_file(self._inbound_file)
        except ValueError as exc:
            self.failures += 1
            log.error(
                "SIGHUP: %s; the inbound list in force stays: %s",
                exc,
                ", ".join(hub.inbound) or "(none)",
            )
            return
        hub.set_inbound(patterns)  # it logs the new list

    def _reload_public_key(self) -> None:
        if self._public_key is None:
            return
        try:
            verifier = read_public_key(self._public_key)
        except ValueError as exc:
            self.failures += 1
            log.error("SIGHUP: %s; connections are still checked with the old key", exc)
            return
        self._hub.set_auth(verifier)
        log.info("SIGHUP: new connections' tokens are checked with %s", self._public_key)
