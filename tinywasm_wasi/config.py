"""Server configuration: one frozen dataclass. Only `tinywasm_wasi.cli` reads the environment."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_MODULES_DIR",
    "DEFAULT_WEB_DIR",
    "Config",
    "KiB",
    "LogFormat",
    "MiB",
    "data_dir",
]

_PACKAGE = Path(__file__).resolve().parent


class LogFormat(enum.StrEnum):
    """How log lines are written: `text` for people, `json` (one object per line) for tools."""

    TEXT = "text"
    JSON = "json"


def data_dir(installed: str, checkout: str) -> Path:
    """A folder of data files that ships with the package.

    pyproject.toml maps ``modules/dist``, ``web`` and ``modules/include`` into the
    package as ``tinywasm_wasi/{examples,static,include}``. An installed copy has the
    folder `installed` inside the package; a checkout (editable install, or run from
    the repository root) has it at `checkout`, relative to the repository root.
    """
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / checkout


DEFAULT_MODULES_DIR = data_dir("examples", "modules/dist")

# A worker's exit status when it cannot listen on its port: the supervisor then stops
# every worker and exits 1, instead of restarting it forever.
WORKER_CANNOT_LISTEN = 3
# A worker's exit status when another live process in the fleet has its name (the same
# --node on two machines): the supervisor stops every worker and exits 1.
WORKER_ID_TAKEN = 4
DEFAULT_WEB_DIR = data_dir("static", "web")
# The CLI puts it under $XDG_CACHE_HOME instead when that is set.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tinywasm-wasi"
KiB = 1024
MiB = 1024 * KiB
MAX_SIZE = 1024**4  # 1 TiB: any size past it is a typo, not a setting
MAX_MEMORY = 4 * 1024**3  # the most a 32-bit WebAssembly memory can address
MAX_WORKERS = 64  # worker processes, at most
MAX_MODULE_THREADS = 256  # threads running module mailboxes, at most
MAX_CALL_TIMEOUT = 3600.0  # seconds one call into a module may be given, at most


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
    # A file of those patterns instead, read at start and again on SIGHUP (web/reload.py).
    ws_inbound_file: Path | None = None
    # Messages a module's mailbox holds before further ones are dropped and counted.
    mailbox_size: int = 10_000
    # Bytes of messages and requests a module's mailbox holds; past it further ones are refused.
    mailbox_bytes: int = 64 * MiB
    # Threads that run every module's mailbox, one item at a time per module; 0: min(4, CPUs + 1).
    module_threads: int = 0
    # Frames a WebSocket client may have queued before it is disconnected as slow.
    ws_queue_size: int = 1_000
    # Watch modules_dir and hot-swap modules whose .wasm changes.
    watch: bool = True
    # Quiet period (seconds) a file must keep before its change is acted on.
    watch_debounce: float = 0.1
    # Module folders (sources and module.toml) rebuilt into modules_dir when their sources
    # change (`tinywasm dev`, --watch-sources); a build error leaves the running version.
    watch_sources: tuple[Path, ...] = ()
    # Seconds a swapped-in version is watched; a trap then rolls back to the old one.
    swap_probation: float = 0.5
    # Seconds between health_check() calls on live modules that export it (0: only at start).
    health_interval: float = 10.0
    log_level: str = "INFO"
    # NATS servers the bus joins (nats://host:port); empty: this process only (the in-process bus).
    nats: tuple[str, ...] = ()
    # Messages for other processes held while NATS is away; past it they are dropped and counted.
    nats_buffer: int = 10_000
    # Worker processes sharing the port (SO_REUSEPORT) over NATS; 1: this process alone.
    workers: int = 1
    # Set by the supervisor in each worker it starts (0-based); None: not a worker.
    worker_index: int | None = None
    # This machine's name in a fleet: workers are <node>-w0 ... (empty: w0 ...). The CLI
    # checks it (policy.placement.check_node_name) and defaults it to the host's short name.
    node: str = ""
    # Run on uvloop's event loop when it is installed (the CLI applies it; see eventloop.py).
    uvloop: bool = True
    # Text lines, or one JSON object per line (tinywasm_wasi/logs.py).
    log_format: LogFormat = LogFormat.TEXT

    # -- limits per module (docs/security.md); `limits.toml` in modules_dir overrides per module
    # Linear memory a module may grow to; beyond it memory.grow fails in the guest.
    memory_limit: int = 64 * MiB
    # Wall-clock deadline for one call into a module (init, on_message, handle, drain...).
    call_timeout: float = 0.1
    # Largest .wasm file loaded.
    max_module_size: int = 16 * MiB
    # Largest payload a module may publish or broadcast.
    max_payload: int = 1 * MiB
    # Traps within quarantine_window seconds that put a module in quarantine.
    quarantine_traps: int = 5
    quarantine_window: float = 10.0
    # First wait before a quarantined module is retried with a fresh instance (doubles, max 5 min).
    quarantine_backoff: float = 5.0
    # Folder for compiled modules (keyed by sha256, wasmtime version, engine settings); None: off.
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    # Folder for the server's own state (history, pins); None: <modules_dir>/.tinywasm.
    state_dir: Path | None = None

    # -- untrusted clients
    # Largest WebSocket frame a client may send.
    ws_max_frame: int = 1 * MiB
    # Bytes a WebSocket client may have queued before it is disconnected as slow.
    ws_queue_bytes: int = 8 * MiB
    # Frames per second one WebSocket connection may send (0: no limit).
    ws_rate_limit: float = 100.0
    # Origins allowed to open /ws; empty: the server's own origin (and clients that send none).
    ws_origins: tuple[str, ...] = ()
    # Token for admin endpoints (reload, rollback); None: only loopback clients may call them.
    admin_token: str | None = None
    # Require the admin token (or loopback) for GET /api/modules and history too.
    status_private: bool = False
    # Largest HTTP request body passed to a module, and largest full-mode response body.
    http_max_body: int = 1 * MiB
    # Seconds a new connection has to send its first request head (slow headers: 408, closed).
    header_timeout: float = 10.0
    # Token auth for /ws: an HS256 secret, or a PEM file with an RSA or Ed25519 public key.
    # Neither: anyone who reaches /ws may connect (trusted networks only).
    auth_secret: str | None = dataclasses.field(default=None, repr=False)
    auth_public_key: Path | None = None
    # Topic history for browsers: rules "pattern:size:ttl" (e.g. "chat.>:100:300s"); empty: off.
    history: tuple[str, ...] = ()
    # Bounds on all kept messages together: topics and bytes (least recent topics go first).
    history_max_topics: int = 10_000
    history_max_bytes: int = 64 * MiB

    @property
    def is_worker(self) -> bool:
        """True in a process a supervisor started as one of --workers."""
        return self.worker_index is not None

    @property
    def state_path(self) -> Path:
        """Where the server keeps its own state: state_dir, else <modules_dir>/.tinywasm."""
        return self.state_dir if self.state_dir is not None else self.modules_dir / ".tinywasm"

    # Environment variables modules' <name>.toml may refer to as ${NAME} (secrets); only the
    # CLI fills it (from its own environment): library code never reads os.environ.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.auth_secret is not None and self.auth_public_key is not None:
            raise ValueError("give auth_secret or auth_public_key, not both")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range: use 0 to 65535")
        if self.drain_timeout < 0:
            raise ValueError("drain_timeout must be zero or more seconds")
        if self.health_interval < 0:
            raise ValueError("health_interval must be zero (off) or more seconds")
        if self.watch_debounce < 0 or self.swap_probation < 0:
            raise ValueError("watch_debounce and swap_probation must be zero or more seconds")
        if self.mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        if self.module_threads == 1 or not 0 <= self.module_threads <= MAX_MODULE_THREADS:
            raise ValueError(
                f"module_threads must be 0 (automatic) or 2 to {MAX_MODULE_THREADS}, e.g. 4 "
                "(with one thread, a slow module would hold up every other)"
            )
        if self.ws_queue_size < 1:
            raise ValueError("ws_queue_size must be at least 1")
        for size_field in (
            "memory_limit",
            "max_module_size",
            "max_payload",
            "ws_max_frame",
            "mailbox_bytes",
        ):
            if getattr(self, size_field) < 1:
                raise ValueError(f"{size_field} must be at least 1 byte")
        if not self.header_timeout > 0:
            raise ValueError("header_timeout must be more than zero seconds, e.g. 10")
        if self.history and (self.nats or self.workers > 1):
            raise ValueError(
                "history is kept per process: it cannot be combined with nats or workers yet "
                "(a client recovering on one process would miss what the others broadcast)"
            )
        if self.history_max_topics < 1 or self.history_max_bytes < 1:
            raise ValueError("history_max_topics and history_max_bytes must be at least 1")
        if self.ws_queue_bytes < 1 or self.http_max_body < 1:
            raise ValueError("ws_queue_bytes and http_max_body must be at least 1 byte")
        if not (0 < self.call_timeout <= MAX_CALL_TIMEOUT):
            raise ValueError(
                f"call_timeout must be more than zero and at most {MAX_CALL_TIMEOUT:g} "
                "seconds, e.g. 0.1"
            )
        if self.memory_limit > MAX_MEMORY:
            raise ValueError(
                "memory_limit must be at most 4GiB, the most a 32-bit WebAssembly memory "
                "can address"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}")
        if self.worker_index is not None and not 0 <= self.worker_index < self.workers:
            raise ValueError(f"worker_index must be 0 to {self.workers - 1} (one of --workers)")
        if self.nats_buffer < 0:
            raise ValueError("nats_buffer must be zero or more messages")
        if self.quarantine_traps < 1:
            raise ValueError("quarantine_traps must be at least 1")
        if self.quarantine_window < 0 or self.quarantine_backoff < 0 or self.ws_rate_limit < 0:
            raise ValueError(
                "quarantine_window, quarantine_backoff and ws_rate_limit must be zero or more"
            )
