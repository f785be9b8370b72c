"""ws4redis_uwsgi.testing.capture_publishes: values in, values out, with no Redis anywhere.

Every test points the publishers at a port where nothing listens: a publish
that reached for Redis would raise ``ConnectionError``. The on-commit tests
use the test site's SQLite database (``site_db``).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
from django.test import RequestFactory, TestCase, override_settings

from tests.servers import free_port
from ws4redis_uwsgi.bus.store import RedisStore
from ws4redis_uwsgi.core.control import Verb
from ws4redis_uwsgi.models import OutboxMessage
from ws4redis_uwsgi.publisher import RedisPublisher
from ws4redis_uwsgi.redis_store import SELF
from ws4redis_uwsgi.testing import Publish, capture_publishes


@pytest.fixture(autouse=True)
def no_redis():
    """Publishers aimed at a closed port: reaching Redis would fail the test."""
    with override_settings(WS4REDIS_CONNECTION=f"redis://127.0.0.1:{free_port()}/0"):
        yield


def test_a_broadcast_is_recorded_with_its_defaults():
    with capture_publishes() as published:
        receivers = RedisPublisher(facility="chat", broadcast=True).publish_message("hello")
    assert receivers == 0  # no server process is subscribed
    assert list(published) == [
        Publish(
            facility="chat",
            message=b"hello",
            broadcast=True,
            expire=60,  # the test site's WS4REDIS_EXPIRE
            binary=False,
            channels=("test:broadcast:chat",),
        )
    ]
    assert published[0].text == "hello"


def test_named_audiences_expire_and_binary_are_recorded():
    with capture_publishes() as published:
        RedisPublisher(facility="news", users=["john", "mary"], groups=("staff",), sessions=["abc"]).publish_message(
            b"\x00\x01", expire=0, binary=True
        )
    publish = published.one()
    assert (publish.facility, publish.message, publish.expire, publish.binary) == ("news", b"\x00\x01", 0, True)
    assert (publish.broadcast, publish.users, publish.groups, publish.sessions) == (False, ("john", "mary"), ("staff",), ("abc",))
    assert publish.channels == ("test:user:john:news", "test:user:mary:news", "test:group:staff:news", "test:session:abc:news")


def test_filters_pick_by_audience_facility_and_message():
    with capture_publishes() as published:
        RedisPublisher(facility="chat", users=["john"]).publish_message("to john")
        RedisPublisher(facility="chat", groups=["cooks"]).publish_message("to cooks")
        RedisPublisher(facility="alerts", users=["john"], broadcast=True).publish_message("alert")
        RedisPublisher(facility="chat", sessions=["k1"]).publish_message("to a browser")
    assert [p.text for p in published.to_user("john")] == ["to john", "alert"]
    assert published.texts(user="john", facility="chat") == ["to john"]
    assert published.to_user("mary") == []
    assert published.to_group("cooks", facility="chat")[0].text == "to cooks"
    assert published.to_session("k1")[0].text == "to a browser"
    assert [p.facility for p in published.broadcasts()] == ["alerts"]
    assert published.one(facility="chat", message="to cooks").groups == ("cooks",)
    assert published.one(message=b"alert").broadcast is True
    published.assert_none(user="mary")
    published.clear()
    assert len(published) == 0
    published.assert_none()


def test_one_and_assert_none_fail_with_what_was_published():
    with capture_publishes() as published:
        RedisPublisher(facility="chat", users=["john"]).publish_message("first")
        RedisPublisher(facility="chat", users=["john"]).publish_message("second")
    with pytest.raises(AssertionError) as failed:
        published.one(user="john")
    assert str(failed.value) == (
        "expected one publish with user='john', found 2; published:\n"
        "  1. 'chat' to users=['john']: b'first'\n"
        "  2. 'chat' to users=['john']: b'second'"
    )
    with pytest.raises(AssertionError, match=r"expected one publish with user='mary', found 0; published:"):
        published.one(user="mary")
    with pytest.raises(AssertionError, match=r"expected no publish with facility='chat', found 2"):
        published.assert_none(facility="chat")
    with capture_publishes() as empty, pytest.raises(AssertionError, match=r"found 0; nothing was published$"):
        empty.one(facility="chat")


def test_what_is_never_published_is_not_recorded():
    with capture_publishes() as published:
        RedisPublisher(facility="chat", broadcast=True).publish_message("--heartbeat--")  # the site's heartbeat
        RedisPublisher(facility="chat").publish_message("to nobody")
    assert list(published) == []


def test_bad_input_still_raises():
    with capture_publishes() as published:
        with pytest.raises(ValueError, match="invalid facility"):
            RedisPublisher(facility="a:b", broadcast=True)
        with pytest.raises(TypeError, match="must be str or bytes"):
            RedisPublisher(facility="chat", broadcast=True).publish_message(42)  # type: ignore[arg-type]
    assert list(published) == []


def test_self_is_resolved_from_the_request(site_db):
    john = User.objects.get(username="john")
    request = RequestFactory().get("/")
    request.user = john
    request.session = SessionStore()
    request.session.create()
    with capture_publishes() as published:
        RedisPublisher(facility="me", users=[SELF], groups=[SELF], sessions=[SELF], request=request).publish_message("mine")
    publish = published.one()
    assert (publish.users, publish.groups, publish.sessions) == (("john",), ("cooks",), (request.session.session_key,))
    request.session.delete()


def test_on_commit_is_recorded_when_the_transaction_commits(site_db):
    with capture_publishes() as published:
        with transaction.atomic():
            assert RedisPublisher(facility="chat", broadcast=True).publish_message("after commit", on_commit=True) is None
            assert list(published) == []
        assert published.one().text == "after commit"


def test_on_commit_after_a_rollback_records_nothing(site_db):
    with capture_publishes() as published:
        with pytest.raises(RuntimeError), transaction.atomic():
            RedisPublisher(facility="chat", broadcast=True).publish_message("never", on_commit=True)
            raise RuntimeError("roll back")
        with transaction.atomic():
            RedisPublisher(facility="chat", broadcast=True).publish_message("kept", on_commit=True)
            try:
                with transaction.atomic():  # a savepoint rolled back: its callbacks go with it
                    RedisPublisher(facility="chat", broadcast=True).publish_message("dropped", on_commit=True)
                    raise RuntimeError("roll back the savepoint")
            except RuntimeError:
                pass
    assert published.texts() == ["kept"]


def test_durable_publishes_are_recorded_after_the_commit_and_leave_no_row(site_db):
    with capture_publishes() as published:
        with transaction.atomic():
            RedisPublisher(facility="chat", users=["john"]).publish_message("durable", durable=True, expire=5)
            assert OutboxMessage.objects.count() == 1
            assert list(published) == []
        with pytest.raises(RuntimeError), transaction.atomic():
            RedisPublisher(facility="chat", users=["john"]).publish_message("rolled back", durable=True)
            raise RuntimeError("roll back")
    publish = published.one()
    assert (publish.text, publish.users, publish.expire) == ("durable", ("john",), 5)
    assert OutboxMessage.objects.count() == 0


def test_in_a_test_transaction_on_commit_callbacks_run_with_django_capture(site_db):
    """The TestCase idiom: the test's transaction never commits; captureOnCommitCallbacks(execute=True) runs them."""
    with capture_publishes() as published, transaction.atomic():  # what TestCase wraps every test in
        with TestCase.captureOnCommitCallbacks(execute=True):
            RedisPublisher(facility="chat", broadcast=True).publish_message("in a TestCase", on_commit=True)
        assert published.one().text == "in a TestCase"
        transaction.set_rollback(True)


def test_live_authorization_commands_are_kept_not_sent(site_db):
    mary = User.objects.get(username="mary")
    with capture_publishes() as published:
        mary.save()  # outside a request and a transaction: sent at once
    assert [c.verb for c in published.control_commands] == [Verb.USER]
    assert list(published) == []


def test_captures_nest_and_the_publisher_is_restored():
    original = RedisStore.__dict__["_publish"]
    with capture_publishes() as outer:
        RedisPublisher(facility="chat", broadcast=True).publish_message("one")
        with capture_publishes() as inner:
            RedisPublisher(facility="chat", broadcast=True).publish_message("two")
        assert RedisStore.__dict__["_publish"] is not original
        RedisPublisher(facility="chat", broadcast=True).publish_message("three")
    assert outer.texts() == ["one", "two", "three"]
    assert inner.texts() == ["two"]
    assert RedisStore.__dict__["_publish"] is original


def test_the_pytest_fixture_records(ws4redis_published):
    RedisPublisher(facility="chat", groups=["staff"]).publish_message("from a fixture")
    assert ws4redis_published.to_group("staff")[0].text == "from a fixture"


def test_async_publishes_are_recorded_too():
    import asyncio

    async def view() -> int:
        return await RedisPublisher(facility="chat", users=["john"]).apublish_message("from an async view", expire=0)

    with capture_publishes() as published:
        assert asyncio.run(view()) == 0
    assert published.one(facility="chat").users == ("john",)
    assert [p.text for p in published.to_user("john")] == ["from an async view"]
