"""Server configuration: one frozen dataclass. Only `cmd` reads flags and TINYWASM_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MODULES_DIR", "DEFAULT_WEB_DIR", "Config"]

_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES_DIR = _ROOT / "modules" / "dist"
DEFAULT_WEB_DIR = _ROOT / "web"


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a server needs to start. Defaults suit the built-in demo."""

    host: str = "127.0.0.1"
    port: int = 6060
    modules_dir: Path = DEFAULT_MODULES_DIR
    web_dir: Path = DEFAULT_WEB_DIR
    drain_timeout: float = 5.0
    # Topic patterns browsers may publish to; the default admits the demo chat.
    ws_inbound: tuple[str, ...] = ("chat",)
    # Messages a module's mailbox holds before further ones are dropped and counted.
    mailbox_size: int = 10_000
    # Frames a WebSocket client may have queued before it is disconnected as slow.
    ws_queue_size: int = 1_000
    # Watch modules_dir and hot-swap modules whose .wasm changes.
    watch: bool = True
    # Quiet period (seconds) a file must keep before its change is acted on.
    watch_debounce: float = 0.1
    # Seconds a swapped-in version is watched; a trap then rolls back to the old one.
    swap_probation: float = 0.5
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range: use 0 to 65535")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must be zero or more seconds")
        if self.watch_debounce < 0 or self.swap_probation < 0:
            raise ValueError("watch_debounce and swap_probation must be zero or more seconds")
        if self.mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        if self.ws_queue_size < 1:
            raise ValueError("ws_queue_size must be at least 1")
