"""Middleware rules and module file names, as pure functions.

A module is a *middleware* when it has a rule. The rule says which HTTP routes
(`/m/<route>`) it runs in front of:

=============  ===================================================
rule text      applies to
=============  ===================================================
``*``          every route
``a,b``        only the routes ``a`` and ``b``
``-a``         every route except ``a``
``*,-a,-b``    every route except ``a`` and ``b`` (same as ``-a,-b``)
``a,b,-b``     an error: ``b`` is both named and excluded
=============  ===================================================

So: the routes named (or every route, when the rule has ``*`` or names none),
minus the routes excluded with ``-``. White space around items is ignored.

The rule comes from the file name, ``name@[rule].wasm``, optionally with an
order prefix, ``NN-name@[rule].wasm``; both load as the module ``name``. A
file without ``@[...]`` is an ordinary module and keeps its whole stem as its
name (``10-foo.wasm`` is the module ``10-foo``). Middlewares run in
`order_key` order: those with an ``NN-`` prefix first, by number, then those
without, each group by name.

The reference server's layout, ``rule.txt`` in the module's source folder, is
read by `supervisor/loader.py`'s `load_rule_txt`; nothing here touches the disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinywasm_wasi.exceptions import TinywasmError
from tinywasm_wasi.policy.names import NAME_CHARSET, is_module_name, name_problem

__all__ = [
    "ModuleFileName",
    "Rule",
    "RuleError",
    "group_by_module",
    "parse_file_name",
    "parse_rule",
    "rule_txt_paths",
]

# A route (module) name in a rule or a file name follows policy/names.py.
_FILE = re.compile(r"(?:(?P<order>\d+)-)?(?P<name>[^@\[\]]+)@\[(?P<rule>[^\[\]]*)\]")

FORMS = (
    "accepted forms: '*' (every route), 'a,b' (only a and b), '-a' (every route "
    "except a), '*,-a' (same as -a); names use " + NAME_CHARSET
)
RULE_TXT = "rule.txt"


class RuleError(TinywasmError, ValueError):
    """A rule or a module file name cannot be parsed; the message shows the accepted forms."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Which routes a middleware runs in front of. Build it with `parse_rule`."""

    text: str  # normalised, e.g. "*,-auth"
    only: frozenset[str] | None  # None: every route
    excluded: frozenset[str]

    def applies_to(self, route: str) -> bool:
        """True if the middleware runs in front of `/m/<route>`."""
        if route in self.excluded:
            return False
        return self.only is None or route in self.only

    def __str__(self) -> str:
        return self.text


def parse_rule(text: str) -> Rule:
    """Parse a rule such as ``*``, ``users,auth``, ``-auth`` or ``*, -auth``.

    Raises:
        RuleError: the rule is empty, has an empty or malformed item, or names a
            route it also excludes. The message lists the accepted forms.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise RuleError(f"empty middleware rule: {FORMS}")
    every = False
    named: list[str] = []
    excluded: list[str] = []
    for item in items:
        if item == "*":
            every = True
            continue
        negated = item.startswith("-")
        name = item[1:].strip() if negated else item
        if not item or not is_module_name(name):
            what = "an empty item" if not item else f"the item {item!r}"
            raise RuleError(f"middleware rule {text!r} has {what}: {FORMS}")
        target = excluded if negated else named
        if name not in target:
            target.append(name)
    both = sorted(set(named) & set(excluded))
    if both:
        raise RuleError(
            f"middleware rule {text!r} both names and excludes {', '.join(both)}: "
            "keep one of the two"
        )
    if every and named:
        raise RuleError(
            f"middleware rule {text!r} has '*' and names ({', '.join(named)}): "
            "'*' already covers every route, so drop the names or the '*'"
        )
    only = None if every or not named else frozenset(named)
    parts = (["*"] if only is None else sorted(named)) + [f"-{n}" for n in sorted(excluded)]
    return Rule(text=",".join(parts), only=only, excluded=frozenset(excluded))


@dataclass(frozen=True, slots=True)
class ModuleFileName:
    """What a module file's name says: the module name, its rule and its place in order."""

    file: str  # the file name, e.g. "20-auth@[users].wasm"
    name: str  # the module name, e.g. "auth"
    rule: Rule | None  # None: an ordinary module
    order: int | None  # the NN- prefix, if any

    @property
    def order_key(self) -> tuple[bool, int, str]:
        """Sort key for middlewares: NN-prefixed first by number, then unprefixed; then name."""
        return (self.order is None, self.order or 0, self.name)


def parse_file_name(file_name: str) -> ModuleFileName:
    """Split ``name.wasm``, ``name@[rule].wasm`` or ``NN-name@[rule].wasm``.

    Raises:
        RuleError: not a ``.wasm`` name, ``@`` or brackets outside the
            ``name@[rule]`` form, or an invalid rule (see `parse_rule`).
    """
    if not file_name.endswith(".wasm") or len(file_name) <= len(".wasm"):
        raise RuleError(f"{file_name!a} is not a module file name: it must end in .wasm")
    stem = file_name[: -len(".wasm")]
    if not any(c in stem for c in "@[]"):
        problem = name_problem(stem)
        if problem is not None:
            raise RuleError(f"module file {file_name!a}: {problem}")
        return ModuleFileName(file=file_name, name=stem, rule=None, order=None)
    match = _FILE.fullmatch(stem)
    if match is None:
        raise RuleError(
            f"cannot read the module file name {file_name!a}: a middleware is named "
            "'name@[rule].wasm' or 'NN-name@[rule].wasm' (e.g. '20-auth@[users,admin].wasm')"
        )
    problem = name_problem(match["name"])
    if problem is not None:
        raise RuleError(f"module file {file_name!a}: {problem}")
    try:
        rule = parse_rule(match["rule"])
    except RuleError as exc:
        raise RuleError(f"module file {file_name!a}: {exc}") from None
    order = int(match["order"]) if match["order"] is not None else None
    return ModuleFileName(file=file_name, name=match["name"], rule=rule, order=order)


def group_by_module(file_names: Iterable[str]) -> dict[str, list[ModuleFileName]]:
    """Parse `file_names` and group them by module name (sorted by file name in each group).

    More than one file for a name (``auth.wasm`` and ``10-auth@[*].wasm``) is a
    conflict the caller must resolve or report. Names that do not parse are skipped;
    call `parse_file_name` on them for the reason.
    """
    groups: dict[str, list[ModuleFileName]] = {}
    for file_name in sorted(file_names):
        try:
            parsed = parse_file_name(file_name)
        except RuleError:
            continue
        groups.setdefault(parsed.name, []).append(parsed)
    return groups


def rule_txt_paths(modules_dir: Path, name: str) -> tuple[Path, Path]:
    """Where the reference layout keeps a module's rule, in the order they are looked up.

    1. ``<modules_dir>/<name>/rule.txt``: a folder beside the ``.wasm`` files.
    2. ``<modules_dir>/../<name>/rule.txt``: the module's source folder beside the
       build output, e.g. ``modules/auth/rule.txt`` for ``modules/dist/auth.wasm``
       (the reference reads ``modules/<name>/rule.txt`` beside its output folder).
    """
    return modules_dir / name / RULE_TXT, modules_dir.parent / name / RULE_TXT
