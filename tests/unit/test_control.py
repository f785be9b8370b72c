"""Live authorization's control messages (ws4redis_uwsgi.core.control) and sealed session keys: values in, values out."""

from __future__ import annotations

import pytest

from ws4redis_uwsgi.core.control import Command, Verb, control_channel, decode, moved_parts, moved_to, ordered


@pytest.mark.parametrize(
    "command",
    [
        Command(Verb.END, "0123456789abcdef0123456789abcdef"),
        Command(Verb.GONE, "42"),
        Command(Verb.USER, "6f1c0e2a-4a4b-4c55-9d6e-1f7b8f1b2c3d"),
        Command(Verb.GROUPS, "7"),
        Command(Verb.MOVED, "0123456789abcdef0123456789abcdef", moved_to("fedcba9876543210fedcba9876543210", "00ff" * 16)),
    ],
)
def test_a_command_survives_the_bus(command):
    assert decode(command.encode()) == command
    assert decode(command.encode().decode()) == command


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"end",
        b"end ",
        b"end a b",
        b"moved a",
        b"logout 42",
        b"END 42",
        b"user 4\n2",
        b"user " + b"9" * 201,
        b"\xff\xfe user 1",
        b"user  1",
        "user \u200b".encode(),
    ],
)
def test_anything_else_is_not_a_command(payload):
    assert decode(payload) is None


def test_fields_that_cannot_travel_are_refused_when_sent():
    with pytest.raises(ValueError):
        Command(Verb.USER, "with space").encode()
    with pytest.raises(ValueError):
        Command(Verb.END, "").encode()


def test_moved_carries_the_new_reference_and_the_sealed_key():
    assert moved_parts(moved_to("ref", "abcd")) == ("ref", "abcd")
    assert moved_parts("garbage") == ("garbage", "")


def test_a_batch_goes_out_without_repeats_and_what_needs_no_database_first():
    user, end = Command(Verb.USER, "1"), Command(Verb.END, "r")
    moved = Command(Verb.MOVED, "r2", "n.s")
    assert ordered([user, end, user, moved, end]) == [end, moved, user]


def test_the_control_channel_is_no_audience_channel_and_keeps_one_slot_on_a_cluster():
    assert control_channel(None) == "ws4redis:control"
    assert control_channel("site") == "site:ws4redis:control"
    assert control_channel("site", sharded=True) == "site:{ws4redis:control}"


def test_a_sealed_key_opens_only_with_the_old_key():
    from ws4redis_uwsgi.django.tokens import open_sealed_key, seal_key

    sealed = seal_key("oldkey0123456789oldkey0123456789", "newkey0123456789newkey0123456789")
    assert sealed is not None and "newkey" not in sealed
    assert open_sealed_key("oldkey0123456789oldkey0123456789", sealed) == "newkey0123456789newkey0123456789"
    assert open_sealed_key("another0123456789another01234567", sealed) != "newkey0123456789newkey0123456789"
    assert open_sealed_key("oldkey0123456789oldkey0123456789", "not hex") is None
    assert seal_key("old", "x" * 65) is None  # longer than the pad: not sealed (the session ends instead)
