"""Resume tokens (ws4redis_uwsgi.core.positions): a client's position in each of its channels, as one short string."""

import itertools
import urllib.parse

import pytest

from ws4redis_uwsgi.core.envelope import new_uid
from ws4redis_uwsgi.core.positions import MAX_TOKEN_LENGTH, TOKEN_UIDS, channel_tag, decode_token, encode_token

NOW = 1_764_460_000_000  # late 2025: 8 base-36 digits, as every id until 2059
DAY = 86_400_000
USER, SESSION, BROADCAST, GROUP, OTHER = (
    "ws4redis:user:alice:chat",
    "ws4redis:session:k3y:chat",
    "ws4redis:broadcast:chat",
    "ws4redis:group:staff:chat",
    "ws4redis:user:bob:notes",
)
CHANNELS = (USER, SESSION, BROADCAST, GROUP, OTHER)


def round_trip(pairs):
    known, ambiguous = decode_token(encode_token(pairs)).positions([c for c, _ in pairs])
    return known, ambiguous


# -- round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(
    "orders",
    [
        [(NOW, 0)] * 5,  # all at one moment, sequence 0
        [(NOW, 0), (NOW, 1), (NOW, 35), (NOW, 36), (NOW, 999)],  # one moment, sequences apart
        [(NOW, 7), (NOW - 1, 0), (NOW - 5_000, 3), (NOW - 3 * DAY, 999), (NOW - 20 * DAY, 0)],
        [(NOW - 9 * DAY, 12), (NOW, 0), (NOW - 1, 999), (NOW - 36, 36), (NOW - 24 * DAY, 1)],
    ],
    ids=["equal", "same-ms", "days-apart", "unordered"],
)
def test_positions_come_back_as_they_went_in(count, orders):
    pairs = list(zip(CHANNELS[:count], orders[:count], strict=True))
    assert round_trip(pairs) == (dict(pairs), [])


def test_a_channel_idle_for_months_keeps_its_exact_position():
    pairs = [(USER, (NOW, 5)), (BROADCAST, (NOW - 400 * DAY, 999))]
    assert round_trip(pairs) == (dict(pairs), [])


def test_a_position_at_the_epoch_survives():
    pairs = [(USER, (NOW, 0)), (SESSION, (0, 0))]
    assert round_trip(pairs) == (dict(pairs), [])


def test_the_order_of_the_channels_does_not_change_the_token():
    pairs = [(USER, (NOW, 1)), (SESSION, (NOW - 10, 0)), (BROADCAST, (NOW - DAY, 4))]
    assert encode_token(pairs) == encode_token(reversed(pairs))


def test_uids_of_the_last_multi_channel_messages_come_back_oldest_first():
    uids = [new_uid() for _ in range(TOKEN_UIDS + 1)]
    token = decode_token(encode_token([(USER, (NOW, 0)), (BROADCAST, (NOW, 0))], uids))
    assert token.uids == tuple(uids[-TOKEN_UIDS:])
    assert token.positions([USER, BROADCAST]) == ({USER: (NOW, 0), BROADCAST: (NOW, 0)}, [])


# -- size and alphabet --------------------------------------------------------------------


def test_a_token_is_8_characters_plus_6_to_14_per_channel():
    """The docstring's claim, at realistic ids: sequences 0..999, channels idle from 0 ms to days (under 25)."""
    deltas = [0, 1, 35, 36, 5_000, 3_600_000, DAY, 10 * DAY, 25 * DAY]
    for count in range(1, 6):
        for delta, seq in itertools.product(deltas, [0, 1, 35, 36, 999]):
            pairs = [(USER, (NOW, seq))] + [(c, (NOW - delta, seq)) for c in CHANNELS[1:count]]
            assert 8 + 6 * count <= len(encode_token(pairs)) <= 8 + 14 * count
    assert len(encode_token([(c, (NOW, 0)) for c in CHANNELS])) == 8 + 6 * 5  # the smallest
    assert len(encode_token([(USER, (NOW, 0)), (SESSION, (NOW - 36**6 + 1, 999))])) == 8 + 6 + 14  # the largest


def test_a_page_on_its_user_session_and_broadcast_channels_has_a_token_of_about_40_characters():
    token = encode_token([(USER, (NOW, 417)), (SESSION, (NOW - 4_000, 12)), (BROADCAST, (NOW - 2 * DAY, 999))])
    assert 35 <= len(token) <= 45


def test_each_uid_adds_13_characters():
    pairs = [(USER, (NOW, 1)), (BROADCAST, (NOW - 5, 2))]
    uids = [new_uid() for _ in range(TOKEN_UIDS)]
    assert len(encode_token(pairs, uids)) == len(encode_token(pairs)) + 13 * TOKEN_UIDS


def test_a_token_needs_no_quoting_in_a_url():
    pairs = [(c, (NOW - i * 3 * DAY, i * 250)) for i, c in enumerate(CHANNELS)]
    for token in (encode_token(pairs), encode_token(pairs, [new_uid() for _ in range(TOKEN_UIDS)])):
        assert token.isascii()
        assert "\n" not in token and "&" not in token
        assert urllib.parse.quote(token) == token
        assert urllib.parse.parse_qs(f"resume={token}&x=1")["resume"] == [token]


# -- earlier versions ---------------------------------------------------------------------


def test_a_token_of_an_earlier_version_is_that_position_on_every_channel():
    token = decode_token("1700000000000-3")
    assert token.positions([USER, BROADCAST, SESSION]) == (
        {USER: (1700000000000, 3), BROADCAST: (1700000000000, 3), SESSION: (1700000000000, 3)},
        [],
    )


# -- what is not a token ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty: the handshake takes resume= as "tokens from now on" and never decodes it
        "abc.",  # an empty part
        "x.zzzz",  # a tag without its delta
        "x.zzzz1.",  # a trailing dot
        "x.ZZZZ1",  # upper case
        "x.zzzz1-",  # a dash without a sequence
        "x.zzzz1-2-3",
        "x.zz1",  # a tag too short
        "mikxxdds",  # a base without any channel
        "12345678901",  # a base longer than 10 digits
        "x.zzzz12345678901",  # a delta longer than 10 digits
        "x.zzzz1._",  # an empty uid
        "x.zzzz1._" + "a" * 33,  # a uid longer than 32 characters
        "x.zzzz1._a.b",  # a uid with a dot
        "1700000000000-",
        "-3",
        "1700000000000-3-4",
        "1700000000000000000-3",  # longer than any stream id
        " 1700000000000-3",
        "mikxxdds.w7yy0\n",
        "mikxxdds.w7yy0&x=1",
        "é",
        "mikxxdds.w7yé0",
        "\u2460.w7yy0",  # a circled digit one
    ],
)
def test_what_is_not_a_token_is_refused(text):
    with pytest.raises(ValueError, match="not a resume token"):
        decode_token(text)


def test_a_token_with_no_channels_is_the_one_of_a_client_without_channels():
    assert encode_token([]) == "0"
    assert decode_token("0").positions([USER]) == ({}, [])


def test_an_over_long_token_is_refused():
    long_but_valid = encode_token([(f"ws4redis:user:u{i}:chat", (NOW - i, i)) for i in range(300)])
    assert len(long_but_valid) > MAX_TOKEN_LENGTH
    with pytest.raises(ValueError, match="too long"):
        decode_token(long_but_valid)


def test_a_token_of_100_channels_is_accepted():
    pairs = [(f"ws4redis:user:u{i}:chat", (NOW - i * DAY, 999)) for i in range(100)]
    token = encode_token(pairs)
    assert len(token) <= MAX_TOKEN_LENGTH
    known, _ = decode_token(token).positions([c for c, _ in pairs])
    assert len(known) == len({channel_tag(c) for c, _ in pairs})


def test_a_position_before_1970_is_refused():
    with pytest.raises(ValueError, match="before 1970"):
        decode_token("5.abcd6")
    assert decode_token("5.abcd5").by_tag == {"abcd": (0, 0)}  # exactly at the epoch: fine


@pytest.mark.parametrize("text", ["\u0661\u0667-\u0663", "\uff11\uff17-3"])  # Arabic-Indic and fullwidth digits
def test_non_ascii_digits_are_not_a_token_of_an_earlier_version(text):
    with pytest.raises(ValueError):
        decode_token(text)


# -- channels the token does not know, or cannot tell apart -------------------------------


def test_a_channel_absent_from_the_token_is_absent_from_known():
    token = decode_token(encode_token([(USER, (NOW, 1)), (BROADCAST, (NOW - 9, 0))]))
    assert token.positions([USER, SESSION, BROADCAST]) == ({USER: (NOW, 1), BROADCAST: (NOW - 9, 0)}, [])


def colliding_channels() -> tuple[str, str]:
    """Two channel names of one shape whose tags collide (found in about 2,300 names)."""
    seen: dict[str, str] = {}
    for i in itertools.count():
        name = f"ws4redis:user:u{i}:chat"
        other = seen.setdefault(channel_tag(name), name)
        if other != name:
            return other, name
    raise AssertionError("unreachable")


def test_two_channels_whose_tags_collide_are_ambiguous_and_the_others_known():
    first, second = colliding_channels()
    assert channel_tag(first) == channel_tag(second)
    token = decode_token(encode_token([(first, (NOW, 1)), (second, (NOW - DAY, 2)), (BROADCAST, (NOW - 3, 0))]))
    known, ambiguous = token.positions([first, second, BROADCAST])
    assert known == {BROADCAST: (NOW - 3, 0)}
    assert sorted(ambiguous) == sorted([first, second])


def test_a_legacy_token_has_no_ambiguity_even_for_colliding_tags():
    first, second = colliding_channels()
    assert decode_token("1700000000000-3").positions([first, second]) == (
        {first: (1700000000000, 3), second: (1700000000000, 3)},
        [],
    )


# -- tags outlive upgrades ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "tag"),
    [("ws4redis:broadcast:chat", "w7yy"), ("ws4redis:user:alice:chat", "cjc6"), ("ws4redis:session:abc:chat", "4cgm")],
)
def test_a_channel_tag_never_changes(channel, tag):
    """Tokens held by clients must survive an upgrade of the server: the hash is part of the format."""
    assert channel_tag(channel) == tag


def test_a_token_written_by_this_version_is_read_by_later_ones():
    assert decode_token("mikxxdds.cjc60.w7yy4abk00-rr").positions([USER, BROADCAST]) == (
        {USER: (int("mikxxdds", 36), 0), BROADCAST: (int("mikxxdds", 36) - 3 * DAY, 999)},
        [],
    )
