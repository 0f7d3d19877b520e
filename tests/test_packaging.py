"""Packaging: the wheel ships the examples and the demo, and only the CLI reads the environment.

The slow test (``-m packaging`` selects it, ``-m 'not packaging'`` skips it) builds the
wheel, installs it into a fresh virtual environment and runs the `tinywasm` script from
a folder outside the repository. It downloads nothing: the wheel is built without build
isolation, and the new environment takes its dependencies from this one through a .pth file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bus", "tinywasm_wasi")
URL = re.compile(r"serving \d+ module\(s\) on http://127\.0\.0\.1:(\d+)")


def test_every_package_is_listed_and_every_data_folder_exists() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    config = pyproject["tool"]["setuptools"]
    listed = set(config["packages"])
    data: dict[str, str] = config["package-dir"]
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in PACKAGES
        for init in (ROOT / top).glob("**/__init__.py")
    }
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(data)
    for folder in data.values():
        assert (ROOT / folder).is_dir(), folder


def _offences(path: Path) -> list[str]:
    """Lines of `path` that read the environment or print."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        what = None
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv"):
            what = f"os.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            names = {alias.name for alias in node.names} & {"environ", "environb", "getenv"}
            what = f"from os import {', '.join(sorted(names))}" if names else None
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            what = "print()" if node.func.id == "print" else None
        if what:
            found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {what}")
    return found


# The command line, and WAT's compiler, which runs as its own process as every compiler does.
COMMAND_LINES = ("cli.py", "cli_authors.py", "wat2wasm.py")


def test_only_the_cli_reads_the_environment_or_prints() -> None:
    clis = [ROOT / "tinywasm_wasi" / name for name in COMMAND_LINES]
    sources = [p for top in PACKAGES for p in sorted((ROOT / top).glob("**/*.py")) if p not in clis]
    assert [line for path in sources for line in _offences(path)] == []
    assert _offences(clis[0]), "the scan no longer sees what the CLI does"


def _run(
    command: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    result = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel of this checkout installed (not editable)."""
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a clean copy: setuptools' build/ folder keeps files deleted since.
    source = tmp / "source"
    junk = shutil.ignore_patterns(
        ".git", ".venv*", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
    )

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = {"build"} if Path(folder) == ROOT else set()  # setuptools' folder, not the package
        return top & set(names) | junk(folder, names)

    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheels = tmp / "wheels"
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source])
    (wheel,) = wheels.glob("tinywasm_wasi-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel])
    # Only now (pip would take this environment's tinywasm-wasi for installed): borrow the
    # dependencies. A folder named in a .pth file is searched; its own .pth files are not
    # run, so this environment's editable install of the checkout stays out.
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    borrowed = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(site.strip()) / "_test_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return venv


def _environment(venv: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TINYWASM_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TINYWASM_CACHE_DIR"] = "off"  # leave the user's cache alone
    return env


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.packaging
@pytest.mark.timeout(120)
def test_installed_tinywasm_serves_the_demo_and_the_examples(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # no repository here: all data comes from the wheel
    elsewhere.mkdir()
    env = _environment(installed)
    where = json.loads(
        _run(
            [
                installed / "bin" / "python",
                "-c",
                "import json, tinywasm_wasi.build as b, tinywasm_wasi.config as c; "
                "print(json.dumps([c.__file__, str(c.DEFAULT_MODULES_DIR), "
                "str(c.DEFAULT_WEB_DIR), str(b.INCLUDE_DIR)]))",
            ],
            cwd=elsewhere,
            env=env,
        )
    )
    package = Path(where[0]).parent
    assert package.is_relative_to(installed), where
    assert [Path(p) for p in where[1:]] == [package / d for d in ("examples", "static", "include")]
    assert (package / "examples" / "10-tag@[*].wasm").is_file()

    examples = len(list((ROOT / "modules" / "dist").glob("*.wasm")))
    log = tmp_path / "tinywasm.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [installed / "bin" / "tinywasm", "--port", "0"],
            cwd=elsewhere,
            env={**env, "TINYWASM_SERVER": "wasi"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        port = None
        while port is None:
            found = URL.search(log.read_text())
            if found:
                port = found.group(1)
            assert proc.poll() is None, f"tinywasm exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no address logged:\n{log.read_text()}"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                status, health = _get(f"{base}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"/healthz never answered:\n{log.read_text()}"
                time.sleep(0.05)
        assert status == 200
        assert json.loads(health)["modules"] == examples

        status, page = _get(f"{base}/")
        assert status == 200
        assert "<title>tinywasm-wasi demo</title>" in page
        assert _get(f"{base}/m/echo/hello") == (200, "echo: GET /m/echo/hello\n")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output
    assert f"loaded from {package / 'examples'}" in output
