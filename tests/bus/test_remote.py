"""The pure side of the remote bus: subjects, interest counts, stamps and groups, as tables."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bus import Bus
from bus.nats import NatsLink
from bus.remote import (
    BROADCAST_PREFIX,
    MAX_SENDER,
    NO_STAMP,
    TOPIC_PREFIX,
    Interest,
    Stamp,
    Unowned,
    from_subject,
    queue_for,
    read_sender,
    read_stamp,
    sender_token,
    served_mark,
    stamp_reply,
    to_subject,
    was_served,
)
from bus.topics import TopicIndex


@pytest.mark.parametrize(
    ("prefix", "topic", "subject"),
    [
        (TOPIC_PREFIX, "chat", "tw.t.chat"),
        (TOPIC_PREFIX, "users.created", "tw.t.users.created"),
        (TOPIC_PREFIX, "chat.*", "tw.t.chat.*"),
        (TOPIC_PREFIX, ">", "tw.t.>"),
        (TOPIC_PREFIX, "rooms.*.typing", "tw.t.rooms.*.typing"),
        (BROADCAST_PREFIX, "chat", "tw.b.chat"),
        (BROADCAST_PREFIX, "café.straße", "tw.b.café.straße"),
    ],
)
def test_topics_map_one_to_one_onto_subjects(prefix: str, topic: str, subject: str) -> None:
    assert to_subject(prefix, topic) == subject
    assert from_subject(prefix, subject) == topic


@pytest.mark.parametrize(
    ("prefix", "subject"),
    [(TOPIC_PREFIX, "tw.b.chat"), (TOPIC_PREFIX, "tw.t."), (BROADCAST_PREFIX, "chat")],
)
def test_a_subject_outside_the_prefix_is_refused(prefix: str, subject: str) -> None:
    with pytest.raises(ValueError, match="is not a topic under"):
        from_subject(prefix, subject)


# (operation, pattern, what it returns, the patterns wanted afterwards)
STEPS = [
    ("add", "chat", True, {"chat"}),
    ("add", "chat", False, {"chat"}),
    ("add", "news.*", True, {"chat", "news.*"}),
    ("remove", "chat", False, {"chat", "news.*"}),
    ("remove", "chat", True, {"news.*"}),
    ("remove", "chat", False, {"news.*"}),
    ("remove", "unknown", False, {"news.*"}),
    ("remove", "news.*", True, set()),
    ("add", "news.*", True, {"news.*"}),
]


def test_interest_says_when_a_pattern_is_first_wanted_and_last_dropped() -> None:
    interest: Interest[str] = Interest()
    for op, pattern, returned, wanted in STEPS:
        assert getattr(interest, op)(pattern) is returned, (op, pattern)
        assert set(interest) == wanted, (op, pattern)
        assert len(interest) == len(wanted)
        assert all(p in interest for p in wanted)


def test_index_under_gives_the_values_of_exactly_one_pattern() -> None:
    index: TopicIndex[str] = TopicIndex()
    for pattern, value in [("chat.a", "x"), ("chat.*", "y"), ("chat.*", "z"), (">", "w")]:
        index.add(pattern, value)
    assert index.under("chat.a") == ["x"]
    assert index.under("chat.*") == ["y", "z"]
    assert index.under(">") == ["w"]
    assert index.under("chat.b") == []
    assert index.match("chat.a") == ["x", "y", "z", "w"]


# (groups served where published, the mark, groups it names, groups it does not name)
MARKS = [
    ([], "", [], ["chat"]),
    (["chat"], ".chat", ["chat"], ["cha", "echo", "c"]),
    (["echo", "chat"], ".chat.echo", ["chat", "echo"], ["chat.echo", "chat,echo"]),
    (["a.b"], ".a~b", ["a.b"], ["a", "b", "a.b.c"]),
    (["a.b", "a"], ".a.a~b", ["a", "a.b"], ["b"]),
    (["a..b", "x-y_z"], ".a~~b.x-y_z", ["a..b", "x-y_z"], ["a.b", "a"]),
]


@pytest.mark.parametrize(("groups", "mark", "named", "not_named"), MARKS)
def test_the_served_mark_names_each_group_exactly(
    groups: list[str], mark: str, named: list[str], not_named: list[str]
) -> None:
    assert served_mark(groups) == mark
    for seq in (0, 7):
        reply = stamp_reply("9f3a", seq, mark)
        assert all(was_served(reply, g) for g in named), reply
        assert not any(was_served(reply, g) for g in not_named), reply
        # The mark never changes the stamp, and the stamp never reads as a group.
        assert read_stamp(reply) == (("9f3a", seq) if seq else NO_STAMP)
        assert not was_served(reply, "9f3a") and not was_served(reply, str(seq))


@pytest.mark.parametrize(
    ("reply", "stamp"),
    [
        (None, NO_STAMP),
        ("", NO_STAMP),
        ("_INBOX.abc.1", NO_STAMP),
        ("tw.seq.9f3a.12", ("9f3a", 12)),
        ("tw.seq.9f3a.12.chat.echo", ("9f3a", 12)),
        ("tw.seq.test.3", ("test", 3)),  # a foreign publisher stamping as we do
        ("tw.seq.9f3a.0", NO_STAMP),
        ("tw.seq.9f3a.0.chat", NO_STAMP),
        ("tw.seq.9f3a", NO_STAMP),
        ("tw.seq..5", NO_STAMP),
        ("tw.seq.9f3a.x", NO_STAMP),
        ("tw.seq.9f3a.-2", NO_STAMP),
    ],
)
def test_stamps_are_read_from_the_reply_subject(reply: str | None, stamp: Stamp) -> None:
    assert read_stamp(reply) == stamp


SENDERS = [
    "user:ann",
    "conn:c7",
    "module:chat.v2",  # a dot: one token all the same
    "user:ann.smith@example.com",
    'user:é "the admin" \\ =x',  # any UTF-8, and the token's own marker
    "user:" + "x" * (MAX_SENDER - 5),  # exactly the most carried
]


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("served", [(), ("chat",), ("echo", "web.api")])
def test_a_sender_rides_last_in_the_stamp_and_comes_back_whole(
    sender: str, served: tuple[str, ...]
) -> None:
    reply = stamp_reply("9f3a", 12, served_mark(served) + sender_token(sender))
    assert read_sender(reply) == sender
    assert read_stamp(reply) == ("9f3a", 12)
    for group in served:
        assert was_served(reply, group)
    assert not was_served(reply, "relay")
    assert " " not in reply and "*" not in reply and ">" not in reply  # a valid subject


@pytest.mark.parametrize(
    ("sender", "token"),
    [
        ("", ""),  # the server's own message
        ("user:" + "x" * (MAX_SENDER - 4), ""),  # one byte over: not carried, never cut
        ("user:" + "é" * MAX_SENDER, ""),
    ],
)
def test_no_sender_and_too_long_a_sender_are_not_carried(sender: str, token: str) -> None:
    assert sender_token(sender) == token
    assert read_sender(stamp_reply("9f3a", 1, sender_token(sender))) == ""


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc.=dXNlcjphbm4",  # not a stamp: a request's inbox
        "tw.seq.9f3a.12",
        "tw.seq.9f3a.12.chat",
        "tw.seq.9f3a.12.=",  # empty
        "tw.seq.9f3a.12.=!!!",  # not base64url
        "tw.seq.9f3a.12.=/w",  # not UTF-8
        "tw.seq.9f3a.12.=dXNlcjphbm4.chat",  # not the last token
        "tw.seq.9f3a.12.=" + "eH" * 400,  # over MAX_SENDER once decoded
    ],
)
def test_a_malformed_or_missing_sender_token_reads_as_no_sender(reply: str | None) -> None:
    assert read_sender(reply) == ""


def test_only_a_stamp_can_say_a_group_was_served() -> None:
    assert not was_served(None, "chat")
    assert not was_served("_INBOX.x.chat", "chat")  # a request's inbox is not a mark
    assert not was_served("tw.seq.chat", "chat")
    assert queue_for("chat") == "tw.chat"


class Recorder:
    """A `Remote` that writes down what the bus tells it (the seam, not our code under test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def forward(
        self, topic: str, payload: bytes, sender: str = "", served: Iterable[str] = ()
    ) -> None:
        self.calls.append(("forward", topic, frozenset(served)))

    def want(self, pattern: str, group: str | None = None) -> None:
        self.calls.append(("want", pattern, group))

    def unwant(self, pattern: str, group: str | None = None) -> None:
        self.calls.append(("unwant", pattern, group))


def test_a_group_is_wanted_apart_and_named_when_served_here() -> None:
    remote = Recorder()
    bus = Bus(remote=remote)
    got: list[tuple[str, str]] = []
    plain = bus.subscribe("chat", lambda t, p: got.append(("plain", t)) and None)
    member = bus.subscribe("chat", lambda t, p: got.append(("member", t)) and None, group="chat")
    other = bus.subscribe("news", lambda t, p: got.append(("news", t)) and None, group="news")
    assert remote.calls == [
        ("want", "chat", None),
        ("want", "chat", "chat"),
        ("want", "news", "news"),
    ]
    bus.publish("chat", b"x")
    assert got == [("plain", "chat"), ("member", "chat")]
    assert remote.calls[-1] == ("forward", "chat", frozenset({"chat"}))  # news not served
    # From another process: a plain delivery serves only the plain subscriber, and what
    # NATS gives the group's member here serves only the member.
    got.clear()
    assert bus.deliver_remote("chat", "chat", b"y") == 1
    assert bus.deliver_group("chat", "chat", "chat", b"z") == 1
    assert bus.deliver_group("chat", "other", "chat", b"z") == 0
    assert got == [("plain", "chat"), ("member", "chat")]
    member.cancel()
    other.cancel()
    bus.publish("chat", b"w")  # no group left: nothing named
    assert remote.calls[-3:] == [
        ("unwant", "chat", "chat"),
        ("unwant", "news", "news"),
        ("forward", "chat", frozenset()),
    ]
    plain.cancel()
    assert remote.calls[-1] == ("unwant", "chat", None)


def test_unowned_counts_what_is_sent_for_modules_nobody_runs() -> None:
    unowned = Unowned()
    unowned.count("chat")
    assert unowned.lost == {} and not unowned.active
    unowned.set({"chat": ["chat", "chat.*"], "news": ["news.>"], "echo": []})
    assert unowned.active
    for topic in ("chat", "chat.room", "news.sport.today", "other", "chat.a.b"):
        unowned.count(topic)
    assert unowned.lost == {"chat": 2, "news": 1}  # once per module, however many patterns
    unowned.set({"echo": []})  # a module without patterns: nothing to count
    assert not unowned.active
    unowned.count("chat")
    assert unowned.lost == {"chat": 2, "news": 1}  # kept: a counter


def test_a_channel_tells_its_watch_each_topic_it_sends() -> None:
    # The channel only queues (nothing is connected): what it sends is what it holds.
    link = NatsLink(["nats://127.0.0.1:1"])
    channel = link.channel(TOPIC_PREFIX, lambda *m: None, stamped=True)
    unowned = Unowned()
    unowned.set({"chat": ["chat"]})
    channel.forward("chat", b"1")
    channel.watch = unowned.count
    channel.forward("chat", b"2", "conn:c1", {"echo_http"})
    channel.forward("news", b"3")
    channel.watch = None
    channel.forward("chat", b"4")
    assert unowned.lost == {"chat": 1}
    assert link.stats().held == 4  # every one still goes to NATS
