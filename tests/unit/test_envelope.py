"""How messages travel on the Redis bus: raw when possible, wrapped when metadata must travel."""

import pytest

from ws4redis_uwsgi.core.envelope import (
    MAGIC,
    MAX_ID_AHEAD_MS,
    BusMessage,
    MalformedMessageError,
    decode,
    encode,
    encode_parts,
    is_durable_uid,
    is_utf8,
    new_durable_uid,
    new_uid,
    outgoing,
    plausible_id,
    with_token,
)


@pytest.mark.parametrize(
    ("payload", "binary"),
    [
        (b"hello", False),
        (b"", False),
        ("ünïcode ✓".encode(), False),
        (b'{"json": [1, 2]}', False),
        (b"\xff\xfe", True),
        (b"\x89PNG\r\n\x1a\n", True),
        (b"caf\xe9", True),  # latin-1, not UTF-8
        (b"\x00\x01\x02", False),  # NUL bytes are valid UTF-8
    ],
)
def test_raw_payload_travels_unchanged_and_non_utf8_becomes_binary(payload, binary):
    data = encode(payload)
    assert data == payload  # other programs may PUBLISH/GET the same bytes
    assert decode(data) == BusMessage(payload, binary, None)
    assert decode(data).binary is binary


def test_bytes_from_another_program_decode_as_they_are():
    assert decode(b"plain PUBLISH") == BusMessage(b"plain PUBLISH", False, None)
    assert decode(b"\xff") == BusMessage(b"\xff", True, None)


@pytest.mark.parametrize("payload", [b"hello", "ü".encode(), b"", b"\xff"])
def test_binary_true_forces_a_binary_frame(payload):
    data = encode(payload, binary=True)
    assert data.startswith(MAGIC)
    message = decode(data)
    assert message.payload == payload
    assert message.binary is True
    assert message.binary is True
    assert message.origin is None


@pytest.mark.parametrize("origin", ["1234-5", "worker7:42", "a", "x" * 64])
@pytest.mark.parametrize(("payload", "binary"), [(b"hi", False), (b"hi", True), (b"\xff\x00", False), (b"", False)])
def test_origin_round_trip(origin, payload, binary):
    message = decode(encode(payload, binary=binary, origin=origin))
    assert message.payload == payload
    assert message.origin == origin
    assert message.binary is (binary or payload == b"\xff\x00")


@pytest.mark.parametrize(
    "payload",
    [
        MAGIC,
        MAGIC + b"hello",
        MAGIC + b"|x\nfake",
        MAGIC + b"b|origin\npayload",
        MAGIC + b"|\n",
        MAGIC + b"\xff",
    ],
)
def test_a_raw_payload_starting_with_magic_is_escaped_and_decodes_to_itself(payload):
    data = encode(payload)
    assert data != payload
    message = decode(data)
    assert message.payload == payload
    assert message.origin is None
    assert message.binary is not is_utf8(payload)


def test_a_payload_containing_newlines_and_bars_survives_wrapping():
    payload = b"line1\nline2|x\n|"
    assert decode(encode(payload, origin="o1")) == BusMessage(payload, False, "o1")
    assert decode(encode(payload, binary=True, origin="o1")) == BusMessage(payload, True, "o1")


@pytest.mark.parametrize("origin", ["a|b", "|", "a\nb", "\n", "end\n", "a/b", "/", "worker/1"])
def test_an_origin_with_a_bar_slash_or_newline_is_refused(origin):
    """'/' separates the origin from a uid: an origin containing it would read back as another origin and a uid."""
    with pytest.raises(ValueError, match="origin"):
        encode(b"payload", origin=origin)
    with pytest.raises(ValueError, match="origin"):
        encode_parts(b"payload", origin=origin, uid="u1")


# -- uids: one message published to several channels --------------------------------------


@pytest.mark.parametrize("origin", [None, "1234-5", "worker7:42"])
@pytest.mark.parametrize("uid", ["a", "Zz09_-", "x" * 32, new_uid(), new_durable_uid()])
@pytest.mark.parametrize("message_id", [None, "1700000000000-3"])
@pytest.mark.parametrize(("payload", "binary"), [(b"hi", False), (b"hi", True), (b"\xff\x00", True), (b"a/b|c\n", False)])
def test_uid_round_trip(origin, uid, message_id, payload, binary):
    data = encode(payload, binary=binary, origin=origin, id=message_id, uid=uid)
    assert decode(data) == BusMessage(payload, binary, origin, message_id, None, uid)


def test_durable_uids_are_told_apart_from_multi_channel_ones_by_their_length():
    durable = {new_durable_uid() for _ in range(100)}
    assert len(durable) == 100 and all(is_durable_uid(uid) for uid in durable)
    assert not any(is_durable_uid(new_uid()) for _ in range(100))


def test_a_durable_uid_travels_without_id_when_history_is_off():
    uid = new_durable_uid()
    data = encode(b"hi", uid=uid)
    assert data == MAGIC + b"|/" + uid.encode() + b"|\nhi"
    assert decode(data, "c") == BusMessage(b"hi", False, None, None, "c", uid)


def test_the_uid_follows_the_origin_after_a_slash():
    """So that workers of the previous version, during a rolling upgrade, read ``origin/uid`` as an origin not theirs."""
    assert encode_parts(b"p", origin="o", uid="U1") == (MAGIC + b"|o/U1|", b"\np")
    assert encode_parts(b"p", uid="U1") == (MAGIC + b"|/U1|", b"\np")
    assert encode_parts(b"p", origin="o") == (MAGIC + b"|o|", b"\np")


@pytest.mark.parametrize(
    ("data", "origin", "uid"),
    [
        (MAGIC + b"|o/U1|1-2\np", "o", "U1"),
        (MAGIC + b"|/U1|1-2\np", None, "U1"),
        (MAGIC + b"b|worker7:42/" + b"A" * 32 + b"|1-2\np", "worker7:42", "A" * 32),
    ],
)
def test_origin_slash_uid_decodes_to_origin_and_uid(data, origin, uid):
    message = decode(data)
    assert (message.origin, message.uid, message.id, message.payload) == (origin, uid, "1-2", b"p")


@pytest.mark.parametrize(
    "data",
    [
        MAGIC + b"|o|1-2\np",  # the previous version's format
        MAGIC + b"b|o|\np",
        MAGIC + b"|o\np",  # two fields, as the first versions wrote
        MAGIC + b"||\np",
    ],
)
def test_a_message_without_uid_decodes_with_uid_none(data):
    assert decode(data).uid is None


@pytest.mark.parametrize(
    "data",
    [
        MAGIC + b"|o/bad.uid|1-1\npayload",
        MAGIC + b"|o/a/b|1-1\npayload",
        MAGIC + b"|o/a:b|1-1\npayload",
        MAGIC + b"|o/" + b"a" * 33 + b"|1-1\npayload",
        MAGIC + b"|/~|\npayload",
    ],
)
def test_a_malformed_uid_is_refused(data):
    with pytest.raises(MalformedMessageError, match="uid"):
        decode(data)


@pytest.mark.parametrize("uid", ["", "a.b", "a/b", "a|b", "x" * 33, "ü", "a b"])
def test_encode_refuses_a_uid_it_could_not_read_back(uid):
    with pytest.raises(ValueError, match="uid"):
        encode(b"payload", uid=uid)


def test_new_uids_are_short_distinct_and_travel():
    uids = {new_uid() for _ in range(1000)}
    assert len(uids) == 1000
    for uid in uids:
        assert len(uid) == 11
        assert decode(encode(b"p", uid=uid)).uid == uid


def test_a_uid_alone_makes_a_message_travel_wrapped():
    data = encode(b"hello", uid="u1")
    assert data != b"hello"
    assert decode(data) == BusMessage(b"hello", False, None, None, None, "u1")


# -- the channel a message came on -----------------------------------------------------------


@pytest.mark.parametrize("data", [b"raw", b"\xff", encode(b"wrapped", origin="o", id="1-2", uid="u1")])
def test_decode_names_the_channel_it_was_given(data):
    assert decode(data, "ws4redis:broadcast:chat").channel == "ws4redis:broadcast:chat"
    assert decode(data).channel is None


# -- what a resuming client receives ---------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "payload", "expected"),
    [
        ("mikxxdds.w7yy0", b"hello", b"mikxxdds.w7yy0\nhello"),
        ("1700000000000-3", b"", b"1700000000000-3\n"),
        ("0", b"\xff\nline", b"0\n\xff\nline"),  # the first newline ends the token
    ],
)
def test_a_resuming_client_gets_the_token_a_newline_and_the_payload(token, payload, expected):
    assert with_token(token, payload) == expected


@pytest.mark.parametrize(
    "data",
    [
        MAGIC + b"no header",  # no newline
        MAGIC + b"b-origin\npayload",  # no '|' before the newline
        MAGIC + b"x|o|1-1\npayload",  # unknown flags
        MAGIC + b"||999999999999999999-0\npayload",  # an id longer than any stream id
        MAGIC + b"||abc\npayload",  # not an id
        MAGIC + b"||1-\xff\npayload",
        MAGIC + b"|or igin|1-1\npayload",  # an origin this package never writes
        MAGIC + b"|||\npayload",
    ],
)
def test_bytes_imitating_the_wrapping_are_refused(data):
    """Another program's raw publish that starts like a wrapped message but is none reaches nobody."""
    with pytest.raises(MalformedMessageError):
        decode(data)


def test_a_forged_id_within_the_format_decodes_and_is_judged_by_plausibility():
    message = decode(MAGIC + b"||999999999999999-0\nFORGED")
    assert message.order == (999999999999999, 0)
    now = 1_700_000_000_000
    assert not plausible_id(message.order, now)
    assert plausible_id((now, 5), now)
    assert plausible_id((now + MAX_ID_AHEAD_MS, 0), now)  # clocks of two hosts may differ a little
    assert not plausible_id((now + MAX_ID_AHEAD_MS + 1, 0), now)


@pytest.mark.parametrize(
    ("data", "expected"), [(b"", True), (b"abc", True), ("é".encode(), True), (b"\xc3", False), (b"\xff", False)]
)
def test_is_utf8(data, expected):
    assert is_utf8(data) is expected


@pytest.mark.parametrize(
    ("message", "binary", "expected"),
    [
        ("héllo", None, ("héllo".encode(), False)),
        ("héllo", True, ("héllo".encode(), True)),
        (b"plain", None, (b"plain", False)),
        (b"\xff\x00", None, (b"\xff\x00", True)),
        (b"plain", True, (b"plain", True)),
        (b"\xff\x00", False, (b"\xff\x00", True)),  # a text frame must be UTF-8
    ],
)
def test_outgoing_payload_and_frame_kind(message, binary, expected):
    assert outgoing(message, binary) == expected
