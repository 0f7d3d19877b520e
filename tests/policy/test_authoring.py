"""What authors are told: problems found from exports, fixes per language (policy/authoring.py)."""

from __future__ import annotations

import pytest

from tinywasm_wasi.policy.authoring import (
    Problem,
    Severity,
    fix,
    guess_from_imports,
    import_hint,
    review,
)
from tinywasm_wasi.policy.manifest import Language

ALLOC = ["memory", "malloc", "free"]


@pytest.mark.parametrize(
    ("exports", "subscribes", "found"),
    [
        ([*ALLOC, "init", "on_message"], True, []),
        (["memory", "init"], False, []),
        (["memory", "init", "on_message"], True, [(Problem.NO_ALLOCATOR, Severity.ERROR)]),
        (["memory", "handle_http"], False, [(Problem.NO_ALLOCATOR, Severity.ERROR)]),
        (["memory", "malloc", "handle"], False, [(Problem.NO_FREE, Severity.WARNING)]),
        ([*ALLOC, "init"], True, [(Problem.NO_HANDLER, Severity.ERROR)]),
        ([*ALLOC, "init", "save_state"], False, [(Problem.HALF_STATE, Severity.WARNING)]),
        (["memory"], False, [(Problem.NOTHING_EXPORTED, Severity.WARNING)]),
        (
            ["memory", "restore_state", "init"],
            False,
            [(Problem.NO_ALLOCATOR, Severity.ERROR), (Problem.HALF_STATE, Severity.WARNING)],
        ),
    ],
)
def test_review(
    exports: list[str], subscribes: bool, found: list[tuple[Problem, Severity]]
) -> None:
    findings = review(exports, subscribes, Language.C)
    assert [(f.problem, f.severity) for f in findings] == found


def test_the_fix_is_in_the_modules_language() -> None:
    (finding,) = review(["memory", "init", "on_message"], True, Language.C)
    assert "add `TW_EXPORT_ALLOCATOR();`" in finding.message
    (finding,) = review(["memory", "init", "on_message"], True, Language.WAT)
    assert '(export "malloc")' in finding.message
    assert fix(Problem.NO_ALLOCATOR, None) == "export malloc (or alloc) and free"
    for language in Language:
        assert fix(Problem.NO_ALLOCATOR, language) != fix(Problem.NO_ALLOCATOR, None)


@pytest.mark.parametrize(
    ("imports", "exports", "language"),
    [
        (["env.abort", "env.publish"], ["memory"], Language.ASSEMBLYSCRIPT),
        (["env.publish"], ["memory", "__new", "__pin"], Language.ASSEMBLYSCRIPT),
        (["gojs.runtime.wasmExit"], ["run"], Language.GO),
        (["env.publish"], ["memory", "malloc"], None),
    ],
)
def test_guess_from_imports(imports: list[str], exports: list[str], language: Language) -> None:
    assert guess_from_imports(imports, exports) is language


def test_import_hints_name_the_fix() -> None:
    assert "--use abort=" in import_hint("env.abort", None)
    assert "GOOS=wasip1" in import_hint("gojs.runtime.wasmExit", Language.GO)
    assert "TW_IMPORT" in import_hint("env.printf", Language.C)
    assert "env.publish" in import_hint("env.printf", None)
