"""After a build: would the server load this module? The loader's own checks, then a review.

`check_module` compiles the bytes with the server's engine settings (`Runtime.compile_module`:
the interface check on imports, memory and export types), starts the module on a private
bus as the swapper does (instantiate, ``_initialize``, ``init()``, the check that what it
subscribes to can be delivered), and reviews its exports (`policy.authoring.review`). A
refusal or an error-level finding fails the build with the reason and the fix in the
module's language; warnings are returned.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING

from bus import Bus
from tinywasm_wasi.exceptions import GuestError, ModuleLoadError, TinywasmError
from tinywasm_wasi.policy.authoring import Finding, Severity, review
from tinywasm_wasi.policy.limits import Limits, LimitsError, limits_from_tables
from tinywasm_wasi.policy.rules import parse_file_name
from tinywasm_wasi.runtime.engine import Runtime
from tinywasm_wasi.runtime.module import WasmModule

if TYPE_CHECKING:
    from tinywasm_wasi.policy.manifest import Manifest

__all__ = ["check_module"]


def _limits(manifest: Manifest, name: str) -> Limits:
    if manifest.limits is None:
        return Limits()
    try:
        return limits_from_tables({name: manifest.limits}, Limits())[name]
    except LimitsError:  # parse_manifest checked them
        return Limits()


async def _start(runtime: Runtime, name: str, data: bytes, limits: Limits) -> WasmModule:
    compiled = await asyncio.to_thread(runtime.compile_module, name, data)
    module = WasmModule(
        compiled, runtime, Bus(), lambda topic, payload: None, mailbox_size=16, limits=limits
    )
    await module.start()
    return module


async def _check(name: str, data: bytes, manifest: Manifest) -> tuple[list[str], list[str]]:
    """The module's exports and subscriptions once started; raises what the loader would."""
    module_name = parse_file_name(name).name
    runtime = Runtime(cache_dir=None)
    try:
        # Named apart, so what init() logs reads as the check's, not the server's module's.
        tag = f"{module_name} (build check)"
        module = await _start(runtime, tag, data, _limits(manifest, module_name))
        try:
            return list(module.compiled.interface.exports), list(module.subscriptions)
        finally:
            await module.close()
    finally:
        runtime.close()


def _run_check(name: str, data: bytes, manifest: Manifest) -> tuple[list[str], list[str]]:
    """`_check` on its own event loop; in a worker thread if this thread already runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_check(name, data, manifest))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tinywasm-check") as pool:
        return pool.submit(asyncio.run, _check(name, data, manifest)).result()


def check_module(name: str, data: bytes, manifest: Manifest) -> list[Finding]:
    """Check the built module `data` (to be written as `name`) as the server would.

    Returns:
        The warnings (the module loads, but something is likely wrong).

    Raises:
        BuildError: the server would refuse it, or it could not work (e.g. it receives
            messages but exports no allocator); the message says why and how to fix it
            in the manifest's language.
    """
    from tinywasm_wasi.build.compile import BuildError

    language = manifest.language
    try:
        exports, subscriptions = _run_check(name, data, manifest)
    except ModuleLoadError as exc:
        raise BuildError(f"the server would refuse {name}: {exc}") from None
    except GuestError as exc:
        raise BuildError(f"{name} built, but starting it failed: {exc}") from None
    except TinywasmError as exc:
        raise BuildError(f"{name} built, but cannot be loaded: {exc}") from None
    findings = review(exports, bool(subscriptions), language)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if errors:
        reasons = "; ".join(f.message for f in errors)
        raise BuildError(f"the server would not run {name} correctly: {reasons}")
    return [f for f in findings if f.severity is Severity.WARNING]
