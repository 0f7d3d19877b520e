"""Topic grants (tinywasm_wasi.policy.grants): covering, refusals and limits.toml keys, as tables."""

from __future__ import annotations

import pytest

from bus import matches
from tinywasm_wasi.policy.grants import GrantAction, TopicGrants, covers, is_system, parse_patterns
from tinywasm_wasi.policy.limits import Limits, LimitsError, parse_overrides

PUB, SUB, CAST = GrantAction.PUBLISH, GrantAction.SUBSCRIBE, GrantAction.BROADCAST


@pytest.mark.parametrize(
    ("grant", "pattern", "expected"),
    [
        (">", "chat", True),
        (">", "a.b.c", True),
        (">", ">", True),
        (">", "*.x", True),
        ("chat", "chat", True),
        ("chat", "chat.x", False),
        ("chat", "*", False),
        ("chat.>", "chat", False),
        ("chat.>", "chat.a", True),
        ("chat.>", "chat.a.b", True),
        ("chat.>", "chat.*", True),
        ("chat.>", "chat.>", True),
        ("chat.>", "chat.*.x", True),
        ("chat.*", "chat.a", True),
        ("chat.*", "chat.*", True),
        ("chat.*", "chat.>", False),
        ("chat.*", "chat.a.b", False),
        ("chat.*", "chat", False),
        ("*", ">", False),
        ("*.b", "a.b", True),
        ("*.b", "*.b", True),
        ("*.b", "a.*", False),
        ("a.*.c", "a.*.c", True),
        ("a.*.c", "a.>", False),
        ("a.b", "a.*", False),
    ],
)
def test_covers(grant: str, pattern: str, expected: bool) -> None:
    assert covers(grant, pattern) is expected


@pytest.mark.parametrize("topic", ["chat", "chat.a", "chat.a.b", "x", "a.b", "$sys.x"])
@pytest.mark.parametrize("grant", [">", "chat", "chat.*", "chat.>", "*", "*.b", "a.*"])
def test_covers_is_matches_for_a_concrete_topic(grant: str, topic: str) -> None:
    assert covers(grant, topic) is matches(grant, topic)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("$sys", True), ("$sys.status", True), ("$sys.>", True), ("$system", False),
     ("a.$sys", False), ("sys.x", False)],
)  # fmt: skip
def test_is_system(topic: str, expected: bool) -> None:
    assert is_system(topic) is expected


LIMITED = TopicGrants(publish=("chat.>",), subscribe=("chat", "$sys.>"), broadcast=())


@pytest.mark.parametrize(
    ("grants", "action", "topic", "expected"),
    [
        (TopicGrants(), PUB, "anything.at.all", None),
        (TopicGrants(), SUB, ">", None),
        (TopicGrants(), SUB, "$sys.>", None),
        (
            TopicGrants(),
            PUB,
            "$sys.status",
            "'$sys.status' is in $sys.>, which only the server may write to",
        ),
        (TopicGrants(), CAST, "$sys", "'$sys' is in $sys.>, which only the server may write to"),
        (LIMITED, PUB, "chat.room", None),
        (LIMITED, PUB, "chat", "'chat' is outside the publish grant (chat.>)"),
        (LIMITED, PUB, "$sys.x", "'$sys.x' is in $sys.>, which only the server may write to"),
        (LIMITED, SUB, "chat", None),
        (LIMITED, SUB, "$sys.status", None),
        (LIMITED, SUB, "$sys.*", None),
        (LIMITED, SUB, ">", "'>' is outside the subscribe grant (chat, $sys.>)"),
        (LIMITED, SUB, "chat.*", "'chat.*' is outside the subscribe grant (chat, $sys.>)"),
        (LIMITED, CAST, "chat", "'chat': the broadcast grant is empty"),
    ],
)
def test_refusal(
    grants: TopicGrants, action: GrantAction, topic: str, expected: str | None
) -> None:
    assert grants.refusal(action, topic) == expected


def test_default_grants_are_everything_and_shown_as_lists() -> None:
    assert TopicGrants().everything
    assert not LIMITED.everything
    assert LIMITED.to_json() == {
        "publish": ["chat.>"],
        "subscribe": ["chat", "$sys.>"],
        "broadcast": [],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [([], ()), (["a", "b.*", "a"], ("a", "b.*")), (("x.>",), ("x.>",))],
)
def test_parse_patterns_accepts_lists(value: object, expected: tuple[str, ...]) -> None:
    assert parse_patterns(value, "here") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("chat", 'here: expected a list of topic patterns, e.g. ["chat", "events.>"]'),
        (5, 'here: expected a list of topic patterns, e.g. ["chat", "events.>"]'),
        (["a..b"], "here: pattern 'a..b' has an empty token"),
        (["a.>.b"], "here: pattern 'a.>.b': '>' may only be the last token"),
        ([3], "here: pattern must be text, not int"),
    ],
)
def test_parse_patterns_refuses_with_where(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_patterns(value, "here")
    assert str(caught.value).startswith(message)


def test_limits_toml_grant_keys() -> None:
    parsed = parse_overrides(
        '[chat]\npublish = ["chat.>"]\nbroadcast = []\n[other]\nmax_payload = 10\n', Limits()
    )
    assert parsed["chat"].grants == TopicGrants(publish=("chat.>",), broadcast=())
    assert parsed["other"].grants == TopicGrants()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[chat]\npublish = "chat"',
            "limits.toml: [chat] publish: expected a list of topic patterns",
        ),
        (
            '[chat]\nsubscribe = ["a..b"]',
            "limits.toml: [chat] subscribe: pattern 'a..b' has an empty token",
        ),
        ("[chat]\nbroadcast = [1]", "limits.toml: [chat] broadcast: pattern must be text"),
    ],
)
def test_limits_toml_grant_errors(text: str, message: str) -> None:
    with pytest.raises(LimitsError) as caught:
        parse_overrides(text, Limits())
    assert str(caught.value).startswith(message)
