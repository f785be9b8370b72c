"""Capturing publishes without Redis: what a view published, as values to assert on.

``with capture_publishes() as published:`` replaces the one place every
publish goes through (``RedisStore._publish``: ``RedisPublisher.publish_message``
at once, after the commit, or through the durable outbox; and its async twin
``RedisPublisher._apublish``: ``await apublish_message(...)``) by a recorder, so
the code under test runs as it would, audiences resolved (``SELF`` included),
and nothing reaches Redis. A publish deferred to a commit is recorded when
the transaction commits, and never after a rollback. The control messages of
live authorization (logouts, group changes) are kept in
``published.control_commands`` instead of going to Redis too.

Inside Django's ``TestCase`` (or pytest-django's ``django_db`` without
``transaction=True``) the test itself is one transaction that never commits:
run the on-commit callbacks with ``self.captureOnCommitCallbacks(execute=True)``
(pytest-django: ``django_capture_on_commit_callbacks(execute=True)``) inside
the capture.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from .. import settings
from ..bus import live_auth
from ..bus.publisher import RedisPublisher
from ..bus.store import RedisMessage, RedisStore

__all__ = ["Publish", "Publishes", "capture_publishes"]


@dataclass(frozen=True)
class Publish:
    """One message as it was published: where it went and what it carried."""

    facility: str
    message: bytes
    broadcast: bool = False
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    #: Seconds the message is persisted (``WS4REDIS_EXPIRE`` when the publish gave none); 0: not persisted.
    expire: int = 0
    #: Whether it goes out as a binary frame even when it is valid UTF-8.
    binary: bool = False
    #: The Redis channels it would have been published on.
    channels: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The message decoded as UTF-8."""
        return self.message.decode("utf-8")

    def matches(
        self,
        *,
        facility: str | None = None,
        user: str | None = None,
        group: str | None = None,
        session: str | None = None,
        broadcast: bool | None = None,
        message: str | bytes | None = None,
        binary: bool | None = None,
    ) -> bool:
        """Whether this publish has every property given (a name: among that audience's names)."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        return (
            (facility is None or self.facility == facility)
            and (user is None or user in self.users)
            and (group is None or group in self.groups)
            and (session is None or session in self.sessions)
            and (broadcast is None or self.broadcast == broadcast)
            and (message is None or self.message == message)
            and (binary is None or self.binary == binary)
        )

    def describe(self) -> str:
        """One line for failure messages: facility, audiences, message."""
        audiences = [a for a in ("broadcast",) if self.broadcast]
        audiences += [f"{name}={list(values)}" for name, values in self._names() if values]
        return f"{self.facility!r} to {', '.join(audiences) or 'nobody'}: {self.message!r}"

    def _names(self) -> list[tuple[str, tuple[str, ...]]]:
        return [("users", self.users), ("groups", self.groups), ("sessions", self.sessions)]


def _describe_filters(filters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in filters.items() if v is not None) or "any properties"


class Publishes(Sequence[Publish]):
    """The publishes recorded by :func:`capture_publishes`, oldest first, with ways to pick some.

    A name filter (``to_user("john")``, ``filter(group="staff")``) matches
    the publishes that named it in that audience; it does not know who
    belongs to a group or gets a broadcast.
    """

    def __init__(self) -> None:
        self._items: list[Publish] = []
        self._lock = threading.Lock()
        #: Live authorization's control messages (:class:`ws4redis_uwsgi.core.control.Command`) that were not sent.
        self.control_commands: list[Any] = []

    @overload
    def __getitem__(self, index: int) -> Publish: ...
    @overload
    def __getitem__(self, index: slice) -> list[Publish]: ...
    def __getitem__(self, index: int | slice) -> Publish | list[Publish]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Publishes {self._items!r}>"

    def record(self, publish: Publish) -> None:
        with self._lock:
            self._items.append(publish)

    def clear(self) -> None:
        """Forget what was recorded so far."""
        with self._lock:
            self._items.clear()
            self.control_commands.clear()

    def filter(
        self,
        *,
        facility: str | None = None,
        user: str | None = None,
        group: str | None = None,
        session: str | None = None,
        broadcast: bool | None = None,
        message: str | bytes | None = None,
        binary: bool | None = None,
    ) -> list[Publish]:
        """The publishes with every property given (see :meth:`Publish.matches`)."""
        return [
            p
            for p in self._items
            if p.matches(
                facility=facility, user=user, group=group, session=session, broadcast=broadcast, message=message, binary=binary
            )
        ]

    def to_user(self, username: str, facility: str | None = None) -> list[Publish]:
        """The publishes that named ``username`` in ``users`` (``SELF`` resolved)."""
        return self.filter(user=username, facility=facility)

    def to_group(self, name: str, facility: str | None = None) -> list[Publish]:
        """The publishes that named group ``name`` in ``groups``."""
        return self.filter(group=name, facility=facility)

    def to_session(self, session_key: str, facility: str | None = None) -> list[Publish]:
        """The publishes that named ``session_key`` in ``sessions``."""
        return self.filter(session=session_key, facility=facility)

    def broadcasts(self, facility: str | None = None) -> list[Publish]:
        """The publishes to everyone (``broadcast=True``)."""
        return self.filter(broadcast=True, facility=facility)

    def texts(self, **filters: Any) -> list[str]:
        """The messages (UTF-8 decoded) of the publishes that match ``filters``, in order."""
        return [p.text for p in self.filter(**filters)]

    def one(self, **filters: Any) -> Publish:
        """The one publish that matches ``filters``; an ``AssertionError`` listing what was published otherwise."""
        found = self.filter(**filters)
        if len(found) != 1:
            raise AssertionError(f"expected one publish with {_describe_filters(filters)}, found {len(found)}; {self._listing()}")
        return found[0]

    def assert_none(self, **filters: Any) -> None:
        """Fail if any publish matches ``filters`` (none given: if anything was published at all)."""
        found = self.filter(**filters)
        if found:
            raise AssertionError(f"expected no publish with {_describe_filters(filters)}, found {len(found)}; {self._listing()}")

    def _listing(self) -> str:
        if not self._items:
            return "nothing was published"
        lines = "".join(f"\n  {i}. {p.describe()}" for i, p in enumerate(self._items, 1))
        return f"published:{lines}"


# Every capture active now, in this process; the patch is in place while there is one.
_active: list[Publishes] = []
_active_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _record_publish(
    store: RedisStore, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None
) -> int:
    """``RedisStore._publish`` while capturing: the same checks and defaults, then a record instead of Redis."""
    data = message if isinstance(message, RedisMessage) else RedisMessage(message)
    if data is None or not store._publishers:
        return 0
    if expire is None:
        expire = settings.get("WS4REDIS_EXPIRE")
    names = store._audience_names or {}
    publish = Publish(
        facility=names.get("facility", ""),
        message=bytes(data),
        broadcast=bool(names.get("broadcast", False)),
        users=tuple(names.get("users", ())),
        groups=tuple(names.get("groups", ())),
        sessions=tuple(names.get("sessions", ())),
        expire=max(int(expire or 0), 0),
        binary=bool(binary),
        channels=tuple(store._publishers),
    )
    store.last_message_id = None
    for capture in list(_active):
        capture.record(publish)
    return 0  # nobody is subscribed: no server process received it


async def _record_apublish(
    store: RedisStore, message: RedisMessage | str | bytes, expire: int | None, binary: bool, uid: str | None
) -> int:
    """``RedisPublisher._apublish`` (``await apublish_message(...)``) while capturing."""
    return _record_publish(store, message, expire, binary, uid)


def _record_commands(commands: list[Any]) -> None:
    for capture in list(_active):
        capture.control_commands.extend(commands)


@contextlib.contextmanager
def capture_publishes() -> Iterator[Publishes]:
    """Record every publish made inside the block instead of sending it to Redis.

    Captures may nest (each records what was published while it was open),
    and record publishes of every thread of the process.
    """
    published = Publishes()
    with _active_lock:
        if not _active:
            _originals["publish"] = RedisStore.__dict__["_publish"]
            _originals["apublish"] = RedisPublisher.__dict__["_apublish"]
            _originals["commands"] = live_auth.publish
            RedisStore._publish = _record_publish  # type: ignore[method-assign,assignment]
            RedisPublisher._apublish = _record_apublish  # type: ignore[method-assign,assignment]
            live_auth.publish = _record_commands
        _active.append(published)
    try:
        yield published
    finally:
        with _active_lock:
            _active.remove(published)
            if not _active:
                RedisStore._publish = _originals.pop("publish")  # type: ignore[method-assign]
                RedisPublisher._apublish = _originals.pop("apublish")  # type: ignore[method-assign]
                live_auth.publish = _originals.pop("commands")
