"""`tinywasm new`: every language's template builds, loads, relays and keeps its count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Broadcasts, HostFactory
from tinywasm_wasi.build import BuildError, Language, build_module, load_manifest
from tinywasm_wasi.build.scaffold import TEMPLATES_DIR, scaffold
from tinywasm_wasi.cli import main
from tinywasm_wasi.cli_authors import modules_dir
from tinywasm_wasi.config import DEFAULT_MODULES_DIR
from tinywasm_wasi.policy.history import Outcome

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize("language", list(Language), ids=str)
async def test_a_new_module_builds_loads_and_keeps_its_count_across_a_swap(
    tmp_path: Path, make_host: HostFactory, broadcasts: Broadcasts, language: Language
) -> None:
    if not (TEMPLATES_DIR / language.value).is_dir():
        pytest.skip(f"no template for {language} yet")
    folder = scaffold("hello-1", language, tmp_path)
    assert load_manifest(folder).language is language
    assert "hello-1" in (folder / "README.md").read_text()
    modules = tmp_path / "modules"
    result = build_module(folder, modules)
    assert result.path == modules / "hello-1.wasm"
    assert result.warnings == ()

    host = await make_host(modules)
    host.bus.publish("hello-1", b"one")
    host.bus.publish("hello-1", b"two")
    first = await broadcasts.wait_for("hello-1", 2)
    assert b"one" in first[0] and b"two" in first[1]

    # An edit: the next build differs, and the count goes on from the old version's.
    for source in folder.iterdir():
        if source.name not in ("module.toml", "README.md"):
            source.write_text(source.read_text().replace("started", "started again"))
    rebuilt = build_module(folder, tmp_path / "next").path.read_bytes()
    assert rebuilt != result.path.read_bytes()
    record = await host.swap("hello-1", "api", lambda: rebuilt)
    assert record is not None and record.outcome is Outcome.SWAPPED
    assert record.warning is None, record.warning  # the new version took the state
    host.bus.publish("hello-1", b"three")
    third = (await broadcasts.wait_for("hello-1", 3))[2]
    assert third.endswith(b"three")
    if language is not Language.WAT:  # the WAT template relays the payload as it is
        assert third == b"#3: three"


def test_new_refuses_bad_names_and_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="invalid module name 'a b'"):
        scaffold("a b", Language.C, tmp_path)
    scaffold("x", Language.C, tmp_path)
    with pytest.raises(BuildError, match="already exists and is not empty"):
        scaffold("x", Language.C, tmp_path)


def test_the_new_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "greeter", "--lang", "wat", "--dir", str(tmp_path)], env={}) == 0
    out = capsys.readouterr().out
    assert "created" in out and "greeter.wat" in out and "next: tinywasm dev" in out
    assert main(["build", str(tmp_path / "greeter"), "-o", str(tmp_path / "m")], env={}) == 0
    assert (tmp_path / "m" / "greeter.wasm").is_file()
    with pytest.raises(SystemExit):
        main(["new", "x", "--lang", "cobol"], env={})
    assert "invalid choice: 'cobol'" in capsys.readouterr().err


def test_dev_without_module_folders_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["dev"], env={}) == 2
    assert "tinywasm new hello --lang c" in capsys.readouterr().err
    assert main(["dev", "missing"], env={}) == 2
    assert "missing is not a folder" in capsys.readouterr().err
    assert main(["dev", "--help"], env={}) == 0
    assert "$sys.build" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "env", "sources", "expected"),
    [
        (Path("out"), {"TINYWASM_MODULES_DIR": "env"}, ["hello"], Path("out")),
        (None, {"TINYWASM_MODULES_DIR": "env"}, ["hello"], Path("env")),
        (None, {}, ["hello"], Path("dist")),  # an author's own module: ./dist
        (None, {}, [], Path("dist")),
        (None, {}, ["<bundled>/chat"], DEFAULT_MODULES_DIR),  # the bundled examples' sources
        (None, {}, ["<bundled>/chat", "hello"], Path("dist")),
    ],
)
def test_built_modules_go_to_the_authors_folder_never_into_the_package(
    tmp_path: Path, flag: Path | None, env: dict[str, str], sources: list[str], expected: Path
) -> None:
    bundled = DEFAULT_MODULES_DIR.parent
    folders = [
        bundled / s.removeprefix("<bundled>/") if s.startswith("<bundled>") else tmp_path / s
        for s in sources
    ]
    assert modules_dir(flag, env, folders) == expected
