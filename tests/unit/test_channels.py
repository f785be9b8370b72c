"""Facilities, channel names, audiences and the websocket query string."""

import pytest

from ws4redis_uwsgi.core.channels import (
    MAX_FACILITY_LENGTH,
    Audience,
    ClientRequest,
    Identity,
    audience_channels,
    channel_name,
    facility_from_path,
    facility_of_request,
    named_channels,
    parse_query,
    prefix_string,
    restrict,
    validate_facility,
)
from ws4redis_uwsgi.exceptions import HandshakeError, UpgradeRequiredError

# -- facilities -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "facility",
    ["chat", "a/b", "ünïcode", "x" * 200, "x", "orders-2024_v1.0", "a/../b", "日本語", "emoji-🎉", "100%", "a=b&c"],
)
def test_accepted_facilities_come_back_unchanged(facility):
    assert validate_facility(facility) == facility


@pytest.mark.parametrize(
    ("facility", "reason"),
    [
        ("", "missing facility"),
        ("x" * 201, "facility too long"),
        ("ü" * 201, "facility too long"),
        ("a:b", "facility contains a forbidden character"),
        (":", "facility contains a forbidden character"),
        ("a*", "facility contains a forbidden character"),
        ("a?", "facility contains a forbidden character"),
        ("a[", "facility contains a forbidden character"),
        ("a]", "facility contains a forbidden character"),
        ("[ab]", "facility contains a forbidden character"),
        ("a b", "facility contains a forbidden character"),
        ("a\tb", "facility contains a forbidden character"),
        ("a\nb", "facility contains a forbidden character"),
        ("chat\n", "facility contains a forbidden character"),
        ("a\rb", "facility contains a forbidden character"),
        ("a\x00b", "facility contains a forbidden character"),
        ("a\x1bb", "facility contains a forbidden character"),
        ("a\x7fb", "facility contains a forbidden character"),
        ("a\u00a0b", "facility contains a forbidden character"),  # no-break space
        ("a\u2028b", "facility contains a forbidden character"),  # line separator
    ],
)
def test_refused_facilities_raise_a_400_with_the_reason(facility, reason):
    with pytest.raises(HandshakeError) as excinfo:
        validate_facility(facility)
    assert str(excinfo.value) == reason
    assert type(excinfo.value) is HandshakeError
    assert excinfo.value.status == "400 Bad Request"


@pytest.mark.parametrize("control", ["\x80", "\x85", "\x9b", "\x9f"], ids=["U+0080", "U+0085", "U+009B", "U+009F"])
def test_c1_control_characters_are_refused_as_the_readme_says(control):
    # README: "A facility containing ... whitespace or control characters ... is refused."
    # U+0080..U+009F are control characters (Unicode category Cc), like U+0000..U+001F.
    with pytest.raises(HandshakeError, match="forbidden character"):
        validate_facility(f"chat{control}")


def test_the_length_limit_is_200_characters():
    assert MAX_FACILITY_LENGTH == 200
    assert validate_facility("é" * 200) == "é" * 200


def wsgi_path(text: str) -> str:
    """``text`` as a WSGI server puts it in ``PATH_INFO``: its UTF-8 bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(
    ("path_info", "websocket_url", "facility"),
    [
        ("/ws/chat", "/ws/", "chat"),
        ("/ws/a/b", "/ws/", "a/b"),
        (wsgi_path("/ws/ü"), "/ws/", "ü"),
        (wsgi_path("/ws/ünïcode/日本"), "/ws/", "ünïcode/日本"),
        ("/live/updates/chat", "/live/updates/", "chat"),
    ],
)
def test_facility_from_path_recovers_utf8_from_the_wsgi_latin1_path(path_info, websocket_url, facility):
    assert facility_from_path(path_info, websocket_url) == facility


@pytest.mark.parametrize(
    ("path_info", "reason"),
    [
        ("/ws/" + b"\xff".decode("latin-1"), "facility is not valid UTF-8"),
        ("/ws/" + b"chat\xc3".decode("latin-1"), "facility is not valid UTF-8"),
        ("/ws/" + b"\xc0\xaf".decode("latin-1"), "facility is not valid UTF-8"),  # overlong '/'
        ("/ws/€", "facility is not valid UTF-8"),  # not a latin-1 string at all
        ("/other/chat", "not under the websocket URL"),
        ("/ws", "not under the websocket URL"),
        ("/wsx/chat", "not under the websocket URL"),
        ("", "not under the websocket URL"),
        ("/ws/", "missing facility"),
        ("/ws/a:b", "facility contains a forbidden character"),
        ("/ws/" + "x" * 201, "facility too long"),
    ],
)
def test_facility_from_path_refusals_carry_the_reason(path_info, reason):
    with pytest.raises(HandshakeError) as excinfo:
        facility_from_path(path_info, "/ws/")
    assert str(excinfo.value) == reason
    assert not isinstance(excinfo.value, UpgradeRequiredError)


@pytest.mark.parametrize(
    ("path_info", "facility"),
    [("/ws/chat", "chat"), ("/ws/ünïcode/日本", "ünïcode/日本"), ("/ws/café", "café")],
)
def test_the_facility_of_a_request_django_decoded_is_its_path_below_the_websocket_url(path_info, facility):
    assert facility_of_request(path_info, "/ws/") == facility


# -- channel names --------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "p"), [("prefix", "prefix:"), (None, ""), ("", "")])
def test_prefix_string(prefix, p):
    assert prefix_string(prefix) == p


@pytest.mark.parametrize(("prefix", "p"), [("prefix", "prefix:"), (None, "")])
@pytest.mark.parametrize(
    ("audience", "name", "expected"),
    [
        (Audience.BROADCAST, None, "{p}broadcast:chat"),
        (Audience.USER, "john", "{p}user:john:chat"),
        (Audience.GROUP, "cooks", "{p}group:cooks:chat"),
        (Audience.SESSION, "abc123", "{p}session:abc123:chat"),
    ],
)
def test_channel_names_follow_the_documented_pattern(prefix, p, audience, name, expected):
    assert channel_name(prefix, audience, "chat", name) == expected.format(p=p)


@pytest.mark.parametrize("audience", [Audience.USER, Audience.GROUP, Audience.SESSION])
@pytest.mark.parametrize("name", [None, ""])
def test_a_named_audience_without_a_name_is_an_error(audience, name):
    with pytest.raises(ValueError, match=audience.value):
        channel_name("p", audience, "chat", name)


def test_audience_values_are_the_words_of_names_and_queries():
    assert [a.value for a in Audience] == ["broadcast", "user", "group", "session"]
    assert Audience("user") is Audience.USER


# -- audiences of a websocket ---------------------------------------------------------

ALL = [Audience.BROADCAST, Audience.USER, Audience.GROUP, Audience.SESSION]
JOHN = Identity("john", ("cooks", "staff"), "sk1")


@pytest.mark.parametrize(("prefix", "p"), [("prefix", "prefix:"), (None, "")])
def test_all_audiences_in_order_session_user_group_broadcast(prefix, p):
    assert audience_channels(prefix, "chat", ALL, JOHN) == [
        f"{p}session:sk1:chat",
        f"{p}user:john:chat",
        f"{p}group:cooks:chat",
        f"{p}group:staff:chat",
        f"{p}broadcast:chat",
    ]


def test_the_order_does_not_depend_on_the_order_asked_and_duplicates_count_once():
    audiences = [Audience.BROADCAST, Audience.GROUP, Audience.BROADCAST, Audience.SESSION, Audience.USER, Audience.USER]
    assert audience_channels(None, "f", audiences, JOHN) == [
        "session:sk1:f",
        "user:john:f",
        "group:cooks:f",
        "group:staff:f",
        "broadcast:f",
    ]


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (Identity(), ["broadcast:chat"]),
        (Identity(None, ("cooks",), None), ["broadcast:chat"]),  # anonymous: groups ignored
        (Identity(None, (), "sk9"), ["session:sk9:chat", "broadcast:chat"]),
        (Identity("", ("cooks",), "sk9"), ["session:sk9:chat", "broadcast:chat"]),
        (Identity("mary", (), None), ["user:mary:chat", "broadcast:chat"]),
        (
            Identity("mary", ("a", "b", "c"), None),
            ["user:mary:chat", "group:a:chat", "group:b:chat", "group:c:chat", "broadcast:chat"],
        ),
    ],
)
def test_audiences_an_identity_cannot_take_yield_no_channel(identity, expected):
    assert audience_channels(None, "chat", ALL, identity) == expected


@pytest.mark.parametrize(
    ("audiences", "expected"),
    [
        ([], []),
        ([Audience.USER], ["user:john:chat"]),
        ([Audience.GROUP], ["group:cooks:chat", "group:staff:chat"]),
        ([Audience.SESSION], ["session:sk1:chat"]),
        (frozenset({Audience.BROADCAST}), ["broadcast:chat"]),
    ],
)
def test_only_the_asked_audiences(audiences, expected):
    assert audience_channels(None, "chat", audiences, JOHN) == expected


def test_named_channels_are_sorted_deduplicated_and_skip_empty_names():
    assert named_channels(
        "p", "chat", broadcast=True, users=["mary", "john", "mary", ""], groups=["staff"], sessions=["s2", "s1"]
    ) == [
        "p:broadcast:chat",
        "p:user:john:chat",
        "p:user:mary:chat",
        "p:group:staff:chat",
        "p:session:s1:chat",
        "p:session:s2:chat",
    ]
    assert named_channels(None, "chat") == []


# -- the query string -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "channels", "echo"),
    [
        ("subscribe-broadcast&publish-user&echo", ("subscribe-broadcast", "publish-user"), True),
        ("", (), False),
        ("echo", (), True),
        ("Subscribe-Broadcast", ("subscribe-broadcast",), False),
        ("SUBSCRIBE-USER&PUBLISH-GROUP&ECHO", ("subscribe-user", "publish-group"), True),
        (" echo ", (), True),
        ("%20subscribe-session%20", ("subscribe-session",), False),
        ("+publish-broadcast+", ("publish-broadcast",), False),
        ("subscribe-user&subscribe-user&Subscribe-User", ("subscribe-user",), False),
        ("subscribe-everything&publish-nothing&foo=1&_=12345&subscribe", (), False),
        ("foo=1&subscribe-group&bar", ("subscribe-group",), False),
        # Values are ignored, as in ws4redis: the parameter's presence is what counts.
        ("echo=0", (), True),
        ("echo=false", (), True),
        ("subscribe-broadcast=no", ("subscribe-broadcast",), False),
        (
            "publish-session&publish-group&publish-user&publish-broadcast",
            ("publish-session", "publish-group", "publish-user", "publish-broadcast"),
            False,
        ),
    ],
)
def test_parse_query(query, channels, echo):
    assert parse_query(query) == ClientRequest(channels, echo)


def test_subscribe_and_publish_sets():
    request = parse_query("subscribe-broadcast&subscribe-user&publish-group&publish-broadcast&echo")
    assert request.subscribe == {Audience.BROADCAST, Audience.USER}
    assert request.publish == {Audience.GROUP, Audience.BROADCAST}
    assert request.echo is True
    assert ClientRequest().subscribe == frozenset()
    assert ClientRequest().publish == frozenset()


def test_restrict_keeps_only_allowed_channels_in_the_asked_order_and_keeps_echo():
    request = parse_query("publish-user&subscribe-broadcast&subscribe-user&echo")
    assert restrict(request, ["subscribe-user", "publish-user"]) == ClientRequest(("publish-user", "subscribe-user"), True)
    assert restrict(request, []) == ClientRequest((), True)
    # An allowed list cannot add channels the client did not ask for.
    assert restrict(parse_query("subscribe-user"), ["subscribe-user", "publish-broadcast"]) == ClientRequest(("subscribe-user",))
    assert restrict(parse_query("subscribe-user"), iter(["subscribe-user"])).subscribe == {Audience.USER}
