"""RedisMessage, SELF and the audience arguments of publishers (no Redis server needed)."""

import pytest
from django.test import override_settings

from ws4redis_uwsgi.bus.store import SELF, RedisMessage, RedisStore, _names

# -- RedisMessage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "data"),
    [
        ("hello", b"hello"),
        ("ünïcode ✓", "ünïcode ✓".encode()),
        ("", b""),
        (b"hello", b"hello"),
        (b"\xff\x00", b"\xff\x00"),
        (bytearray(b"ba"), b"ba"),
        (memoryview(b"mv"), b"mv"),
        ([b"message", b"chan", b"data"], b"data"),
        (["message", "chan", "text"], b"text"),
        ([b"message", b"chan", b"\xff"], b"\xff"),
    ],
)
def test_redis_message_is_bytes(value, data):
    message = RedisMessage(value)
    assert isinstance(message, RedisMessage)
    assert isinstance(message, bytes)
    assert message == data


def test_a_redis_message_of_a_redis_message_is_equal():
    assert RedisMessage(RedisMessage("x")) == b"x"


@pytest.mark.parametrize("value", ["hb", b"hb", [b"message", b"chan", b"hb"]])
def test_the_heartbeat_gives_none(value):
    with override_settings(WS4REDIS_HEARTBEAT="hb"):
        assert RedisMessage(value) is None


def test_without_a_heartbeat_setting_nothing_is_dropped():
    with override_settings(WS4REDIS_HEARTBEAT=None):
        assert RedisMessage("hb") == b"hb"
        assert RedisMessage("") == b""
    with override_settings(WS4REDIS_HEARTBEAT="hb"):
        assert RedisMessage("hb ") == b"hb "
        assert RedisMessage("HB") == b"HB"


def test_a_non_ascii_heartbeat_is_compared_as_utf8():
    with override_settings(WS4REDIS_HEARTBEAT="pïng"):
        assert RedisMessage("pïng") is None
        assert RedisMessage("pïng".encode()) is None
        assert RedisMessage("pïng".encode("latin-1")) == "pïng".encode("latin-1")


def test_none_gives_none():
    assert RedisMessage(None) is None


@pytest.mark.parametrize("value", [42, 1.5, object(), {"a": 1}, [b"subscribe", b"chan", 1], [b"message", b"chan", 42]])
def test_other_types_raise_type_error(value):
    with pytest.raises(TypeError, match="str or bytes"):
        RedisMessage(value)


# -- SELF and the audience arguments --------------------------------------------------


def test_self_is_a_readable_singleton():
    assert repr(SELF) == "SELF"
    assert SELF is SELF


class FakeGroups:
    def __init__(self, names):
        self._names = names

    def values_list(self, field, flat=False):
        assert (field, flat) == ("name", True)
        return list(self._names)


class FakeUser:
    def __init__(self, username=None, groups=()):
        self.username = username
        self.is_authenticated = username is not None
        self.groups = FakeGroups(groups)

    def get_username(self):
        return self.username


class FakeSession:
    def __init__(self, session_key):
        self.session_key = session_key
        self.loaded = False

    def keys(self):
        self.loaded = True
        return []


class FakeRequest:
    def __init__(self, username=None, groups=(), session_key=None):
        self.user = FakeUser(username, groups)
        self.session = FakeSession(session_key)


JOHN = FakeRequest("john", ["staff", "cooks"], "sk1")
ANONYMOUS = FakeRequest(None, ["cooks"], "sk2")


@pytest.fixture
def store():
    with override_settings(WS4REDIS_PREFIX=None):
        yield RedisStore(connection=None)


@pytest.mark.parametrize(
    ("request_", "kwargs", "expected"),
    [
        (None, {"broadcast": True}, ["broadcast:chat"]),
        (JOHN, {"broadcast": True}, ["broadcast:chat"]),
        (None, {}, []),
        (None, {"broadcast": False}, []),
        (None, {"broadcast": 1}, []),  # only True broadcasts, as in ws4redis
        (JOHN, {"users": ["a", SELF]}, ["user:a:chat", "user:john:chat"]),
        (JOHN, {"users": ("a", SELF, "a", "john")}, ["user:a:chat", "user:john:chat"]),
        (JOHN, {"users": {SELF}}, ["user:john:chat"]),
        (JOHN, {"groups": [SELF]}, ["group:cooks:chat", "group:staff:chat"]),
        (JOHN, {"groups": [SELF, "extra"]}, ["group:cooks:chat", "group:extra:chat", "group:staff:chat"]),
        (JOHN, {"sessions": [SELF]}, ["session:sk1:chat"]),
        (JOHN, {"users": True}, ["user:john:chat"]),
        (JOHN, {"groups": True}, ["group:cooks:chat", "group:staff:chat"]),
        (JOHN, {"sessions": True}, ["session:sk1:chat"]),
        (JOHN, {"users": False, "groups": None, "sessions": ()}, []),
        (None, {"users": "bob"}, ["user:bob:chat"]),
        (None, {"groups": "staff"}, ["group:staff:chat"]),
        (None, {"sessions": "abc"}, ["session:abc:chat"]),
        (None, {"users": [SELF], "groups": [SELF], "sessions": [SELF]}, []),  # no request: SELF is nobody
        (None, {"users": True}, []),
        (ANONYMOUS, {"users": [SELF], "groups": [SELF]}, []),  # anonymous: no user or group audience
        (ANONYMOUS, {"sessions": [SELF]}, ["session:sk2:chat"]),
        (FakeRequest("mary"), {"sessions": [SELF], "groups": [SELF]}, []),  # no session, no groups
        (
            JOHN,
            {"broadcast": True, "users": ["a", SELF], "groups": [SELF], "sessions": [SELF]},
            ["broadcast:chat", "user:a:chat", "user:john:chat", "group:cooks:chat", "group:staff:chat", "session:sk1:chat"],
        ),
    ],
)
def test_message_channels(store, request_, kwargs, expected):
    assert store._get_message_channels(request_, "chat", **kwargs) == expected


@pytest.mark.parametrize("container", [list, tuple, set, frozenset])
def test_self_is_resolved_in_every_accepted_container(store, container):
    # _names accepts lists, tuples, sets and frozensets, so SELF must mean the
    # requesting user in each of them.
    assert store._get_message_channels(JOHN, "chat", users=container([SELF])) == ["user:john:chat"]
    assert store._get_message_channels(JOHN, "chat", groups=container([SELF])) == ["group:cooks:chat", "group:staff:chat"]
    assert store._get_message_channels(JOHN, "chat", sessions=container([SELF])) == ["session:sk1:chat"]


def test_self_loads_the_session_before_reading_its_key(store):
    request = FakeRequest("john", [], "sk1")
    store._get_message_channels(request, "chat", sessions=[SELF])
    assert request.session.loaded


@pytest.mark.parametrize(("prefix", "p"), [("prefix", "prefix:"), (None, "")])
def test_message_channels_carry_the_prefix(prefix, p):
    with override_settings(WS4REDIS_PREFIX=prefix):
        channels = RedisStore(connection=None)._get_message_channels(JOHN, "chat", broadcast=True, users=[SELF], groups=["g"])
        assert RedisStore.get_prefix() == p
    assert channels == [f"{p}broadcast:chat", f"{p}user:john:chat", f"{p}group:g:chat"]


@pytest.mark.parametrize("facility", ["", "a:b", "a*", "a b", "x" * 201, "a\nb"])
def test_an_invalid_facility_raises_value_error(store, facility):
    with pytest.raises(ValueError, match="invalid facility"):
        store._get_message_channels(None, facility, broadcast=True)


@pytest.mark.parametrize("argument", ["users", "groups", "sessions"])
@pytest.mark.parametrize("value", [42, 1.5, {"a": 1}, b"bob", object()])
def test_an_argument_that_is_not_a_list_raises_value_error(store, argument, value):
    with pytest.raises(ValueError, match=f"`{argument}` must be a list or tuple"):
        store._get_message_channels(JOHN, "chat", **{argument: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ["own1", "own2"]),
        (False, []),
        (None, []),
        ("bob", ["bob"]),
        (["a", SELF, "b"], ["a", "own1", "own2", "b"]),
        ((SELF,), ["own1", "own2"]),
        ([1, 2], ["1", "2"]),
    ],
)
def test_names(value, expected):
    assert _names(value, ["own1", "own2"], "users") == expected


def test_a_store_publishes_nowhere_until_told():
    assert RedisStore(connection=None).publish_message("x") == 0
