"""Middleware rules and module file names (tinywasm_wasi.policy.rules): pure table tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinywasm_wasi.policy.rules import (
    Rule,
    RuleError,
    group_by_module,
    parse_file_name,
    parse_rule,
    rule_txt_paths,
)
from tinywasm_wasi.supervisor.loader import load_rule_txt

ROUTES = ("users", "auth", "admin", "echo")


@pytest.mark.parametrize(
    ("text", "normalised", "applies"),
    [
        ("*", "*", {"users", "auth", "admin", "echo"}),
        (" * ", "*", {"users", "auth", "admin", "echo"}),
        ("users", "users", {"users"}),
        ("users,auth", "auth,users", {"users", "auth"}),
        (" users , auth ", "auth,users", {"users", "auth"}),
        ("users,users", "users", {"users"}),
        ("-auth", "*,-auth", {"users", "admin", "echo"}),
        ("- auth", "*,-auth", {"users", "admin", "echo"}),
        ("*,-auth", "*,-auth", {"users", "admin", "echo"}),
        ("-auth,*", "*,-auth", {"users", "admin", "echo"}),
        ("*, -auth, -admin", "*,-admin,-auth", {"users", "echo"}),
        ("-auth,-admin", "*,-admin,-auth", {"users", "echo"}),
        ("users,admin,-auth", "admin,users,-auth", {"users", "admin"}),
        ("echo_http", "echo_http", set()),
        ("v2.api-x", "v2.api-x", set()),
        ("_x", "_x", set()),
    ],
)
def test_rule_forms(text: str, normalised: str, applies: set[str]) -> None:
    rule = parse_rule(text)
    assert rule.text == normalised == str(rule)
    assert {r for r in ROUTES if rule.applies_to(r)} == applies
    assert parse_rule(rule.text) == rule  # the normalised text means the same


def test_except_rule_excludes_what_the_concepts_pipeline_let_through() -> None:
    """Regression: the original concept's pipeline never applies `-except`.

    There `-auth` parsed to Rule{Except: [auth]} with All false, and the pipeline
    only looked at All and Only, then hit `continue` on Except: `-auth` ran in
    front of nothing, and `*,-auth` (Only=["*"]) too. Here both mean "every
    route except auth".
    """
    for text in ("-auth", "*,-auth"):
        rule = parse_rule(text)
        assert not rule.applies_to("auth"), text
        assert rule.applies_to("users"), text
        assert rule.applies_to("anything"), text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty middleware rule"),
        ("   ", "empty middleware rule"),
        ("users,", "an empty item"),
        (",users", "an empty item"),
        ("users,,auth", "an empty item"),
        ("-", "the item '-'"),
        ("--auth", "the item '--auth'"),
        ("us ers", "the item 'us ers'"),
        ("users;auth", "the item 'users;auth'"),
        ("**", "the item '**'"),
        ("-*", "the item '-*'"),
        (".hidden", "the item '.hidden'"),
        ("trailing-", "the item 'trailing-'"),
        ("users,-users", "both names and excludes users"),
        ("*,users", "'*' already covers every route"),
    ],
)
def test_invalid_rules_say_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    message = str(info.value)
    assert says in message
    if "empty" in says or "item" in says:
        assert "accepted forms: '*'" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("file_name", "name", "rule", "order"),
    [
        ("echo.wasm", "echo", None, None),
        ("10-foo.wasm", "10-foo", None, None),  # no rule: the prefix is part of the name
        ("cors@[*].wasm", "cors", "*", None),
        ("jwt@[users,auth].wasm", "jwt", "auth,users", None),
        ("log@[-auth].wasm", "log", "*,-auth", None),
        ("20-auth@[echo_http].wasm", "auth", "echo_http", 20),
        ("007-tag@[*, -admin].wasm", "tag", "*,-admin", 7),
        ("10-my-mw@[*].wasm", "my-mw", "*", 10),
    ],
)
def test_file_names(file_name: str, name: str, rule: str | None, order: int | None) -> None:
    parsed = parse_file_name(file_name)
    assert (parsed.file, parsed.name, parsed.order) == (file_name, name, order)
    assert (parsed.rule.text if parsed.rule else None) == rule


@pytest.mark.parametrize(
    ("file_name", "says"),
    [
        ("echo.txt", "must end in .wasm"),
        (".wasm", "must end in .wasm"),
        ("auth@[].wasm", "empty middleware rule"),
        ("auth@[users,,x].wasm", "an empty item"),
        ("auth@users.wasm", "'name@[rule].wasm'"),
        ("auth@[*]x.wasm", "'name@[rule].wasm'"),
        ("@[*].wasm", "'name@[rule].wasm'"),
        ("10-@[*].wasm", "starts or ends with '.' or '-'"),
        ("a[b].wasm", "'name@[rule].wasm'"),
        ("au th@[*].wasm", "has ' '"),
        ("a b.wasm", "invalid module name 'a b': it has ' '"),
        ("x\nINFO forged.wasm", "has '\\n', ' '"),
        ("caf\udce9.wasm", "has '\\udce9'"),  # a non-UTF-8 name, as os.listdir gives it
        ("-x.wasm", "starts or ends with"),
        ("a" * 129 + ".wasm", "of 129 characters is too long"),
        ("auth@[[*]].wasm", "'name@[rule].wasm'"),
    ],
)
def test_bad_file_names_say_why(file_name: str, says: str) -> None:
    with pytest.raises(RuleError) as info:
        parse_file_name(file_name)
    assert says in str(info.value)


def test_middleware_order_is_by_prefix_number_then_unprefixed_then_name() -> None:
    files = [
        "zeta@[*].wasm",
        "alpha@[*].wasm",
        "10-tag@[*].wasm",
        "9-first@[*].wasm",
        "20-auth@[echo].wasm",
        "20-aaa@[*].wasm",
    ]
    ordered = sorted((parse_file_name(f) for f in files), key=lambda p: p.order_key)
    assert [p.name for p in ordered] == ["first", "tag", "aaa", "auth", "alpha", "zeta"]


def test_group_by_module_shows_two_files_for_one_name() -> None:
    groups = group_by_module(
        ["auth.wasm", "10-auth@[*].wasm", "echo.wasm", "bad@[].wasm", "tag@[*].wasm"]
    )
    assert {n: [p.file for p in g] for n, g in groups.items()} == {
        "auth": ["10-auth@[*].wasm", "auth.wasm"],
        "echo": ["echo.wasm"],
        "tag": ["tag@[*].wasm"],
    }


def test_rule_txt_beside_the_wasm_files_wins_over_the_source_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    assert load_rule_txt(dist, "jwt") is None
    assert rule_txt_paths(dist, "jwt") == (
        dist / "jwt" / "rule.txt",
        tmp_path / "jwt" / "rule.txt",
    )

    (tmp_path / "jwt").mkdir()
    (tmp_path / "jwt" / "rule.txt").write_text("users, auth\n")
    found = load_rule_txt(dist, "jwt")
    assert found is not None
    assert found == (parse_rule("users,auth"), tmp_path / "jwt" / "rule.txt")

    (dist / "jwt").mkdir()
    (dist / "jwt" / "rule.txt").write_text("-auth")
    found = load_rule_txt(dist, "jwt")
    assert found is not None and found[0].text == "*,-auth"
    assert found[1] == dist / "jwt" / "rule.txt"


def test_empty_rule_txt_means_every_route_as_in_the_reference(tmp_path: Path) -> None:
    (tmp_path / "cors").mkdir()
    (tmp_path / "cors" / "rule.txt").write_text(" \n")
    found = load_rule_txt(tmp_path, "cors")
    assert found is not None and found[0] == parse_rule("*")


def test_invalid_rule_txt_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "jwt").mkdir()
    (tmp_path / "jwt" / "rule.txt").write_text("users,,auth")
    with pytest.raises(RuleError, match=r"jwt/rule\.txt: middleware rule 'users,,auth'"):
        load_rule_txt(tmp_path, "jwt")


def test_rule_is_a_hashable_value() -> None:
    assert parse_rule("a,b") == parse_rule("b, a")
    assert len({parse_rule("-a"), parse_rule("*,-a")}) == 1
    assert isinstance(parse_rule("*"), Rule)
