"""The durable outbox: a message written in the publishing transaction, published after the commit, never lost.

``publish_message(..., durable=True)`` (or ``WS4REDIS_DURABLE_OUTBOX``)
inside ``transaction.atomic()`` writes a row (:class:`~ws4redis_uwsgi.models.OutboxMessage`)
in the same transaction, on the database ``using``; after the commit the
same process publishes it and deletes the row. A rollback leaves no row and
publishes nothing. Outside a transaction the row is written, published and
deleted at once. A row left behind (the process died between its commit
and its publish, or Redis could not be reached) is published by a **drain**:
a greenlet in every websocket worker (every ``WS4REDIS_OUTBOX_DRAIN_INTERVAL``
seconds, jittered) and ``manage.py ws4redis drain-outbox``. A drain takes
only rows older than ``WS4REDIS_OUTBOX_GRACE`` seconds, so that it does not
race the process that committed them.

Each row is published under its own uid (:func:`~ws4redis_uwsgi.core.envelope.new_durable_uid`),
carried by every copy on the bus, with history or without: a websocket that
has the message already drops a copy published again (:mod:`ws4redis_uwsgi.core.outbox`).
So a message goes out at least once and a client sees it once. Drains do
not publish a row twice where they can help it: on databases with
``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8, Oracle) each
drain locks the rows it publishes, and others skip them; elsewhere (SQLite)
one drain at a time per database holds a Redis lock (``{p}ws4redis:outbox-drain:<alias>``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from .. import settings
from ..core import envelope
from ..core.channels import prefix_string
from .connection import get_client
from .store import RedisStore

if TYPE_CHECKING:
    from ..models import OutboxMessage

logger = logging.getLogger("ws4redis_uwsgi")

#: Seconds between two drain rounds in a websocket worker when the outbox is on and the interval is not set.
DEFAULT_DRAIN_INTERVAL = 5.0
#: Rows a drain takes at once (in one transaction, where rows are locked).
BATCH = 100
#: Seconds the Redis lock of a drain without row locks lives, should its holder die.
LOCK_SECONDS = 30

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def databases() -> list[str]:
    """The databases whose outbox the drains empty (``WS4REDIS_OUTBOX_DATABASES``)."""
    return list(settings.get("WS4REDIS_OUTBOX_DATABASES"))


def drain_interval() -> float:
    """Seconds between two drain rounds in a websocket worker; 0: no drain there."""
    value = settings.get("WS4REDIS_OUTBOX_DRAIN_INTERVAL")
    if value is None:
        return DEFAULT_DRAIN_INTERVAL if settings.get("WS4REDIS_DURABLE_OUTBOX") else 0.0
    return float(value)


def grace() -> float:
    """Seconds a row must be old before a drain publishes it (``WS4REDIS_OUTBOX_GRACE``)."""
    return float(settings.get("WS4REDIS_OUTBOX_GRACE"))


def check_database(alias: str) -> None:
    """:raises ValueError: no drain empties ``alias``'s outbox, so a row a crash left there would stay."""
    if alias not in databases():
        raise ValueError(
            f"durable publishing on database {alias!r}: no drain empties its outbox; add it to WS4REDIS_OUTBOX_DATABASES"
        )


def write(alias: str, audiences: dict[str, Any], data: bytes, binary: bool, expire: int) -> OutboxMessage:
    """Write the outbox row of one message on ``alias`` (in the caller's transaction, if any)."""
    from ..models import OutboxMessage

    targets = {name: value for name, value in audiences.items() if name != "facility"}
    return OutboxMessage.objects.using(alias).create(
        uid=envelope.new_durable_uid(),
        created=timezone.now(),
        facility=audiences["facility"],
        audiences=targets,
        message=data,
        binary=binary,
        expire=expire,
    )


def publish_committed(store: RedisStore, row: OutboxMessage, alias: str) -> int | None:
    """Publish ``row`` (committed) on ``store``'s channels and delete it; returns the receivers.

    When Redis cannot be reached the row stays for the drain: logged, and
    None returned. When the row cannot be deleted it is published again by a
    drain, and clients drop the copy.
    """
    try:
        receivers = store._publish(bytes(row.message), row.expire, row.binary, row.uid)
    except redis.RedisError as exc:
        logger.warning(
            "durable message for %s not published yet (%s): it stays in the outbox of database %r for the drain",
            ", ".join(store._publishers),
            exc,
            alias,
        )
        return None
    try:
        type(row).objects.using(alias).filter(uid=row.uid).delete()
    except DatabaseError as exc:
        logger.warning("durable message %s published, but its outbox row stays (%s): a drain publishes it again", row.uid, exc)
    return receivers


def publish_row(row: OutboxMessage, client: Any) -> int:
    """Publish one row as its publisher would have, under its uid; returns the receivers."""
    store = RedisStore(client)
    audiences = row.audiences
    store._publishers = store._get_message_channels(
        facility=row.facility,
        broadcast=audiences.get("broadcast") is True,
        users=list(audiences.get("users", ())),
        groups=list(audiences.get("groups", ())),
        sessions=list(audiences.get("sessions", ())),
    )
    return store._publish(bytes(row.message), row.expire, row.binary, row.uid)


def drain(alias: str, older_than: float | None = None, *, client: Any = None, batch: int = BATCH, wait: float = 0.0) -> int:
    """Publish and delete the rows of ``alias``'s outbox older than ``older_than`` seconds (default: the grace), oldest first.

    Returns how many were published; 0 as well when another drain still
    holds the database's Redis lock after ``wait`` seconds.

    :raises redis.RedisError: Redis cannot be reached (what was published until then is deleted).
    :raises django.db.DatabaseError: the database refused (no table: ``manage.py migrate``).
    """
    from ..models import OutboxMessage

    client = client if client is not None else get_client()
    cutoff = timezone.now() - timedelta(seconds=grace() if older_than is None else older_than)
    due = OutboxMessage.objects.using(alias).filter(created__lte=cutoff).order_by("created", "id")
    if connections[alias].features.has_select_for_update_skip_locked:
        # Rows locked by another drain are skipped: each row is published by one drain.
        return _drain_batches(alias, client, batch, lambda: list(due.select_for_update(skip_locked=True)[:batch]), locked=True)
    lock = _Lock(client, f"{prefix_string(settings.get('WS4REDIS_PREFIX'))}ws4redis:outbox-drain:{alias}")
    if not lock.acquire(wait):
        return 0
    try:
        return _drain_batches(alias, client, batch, lambda: list(due[:batch]), locked=False)
    finally:
        lock.release()


def _drain_batches(alias: str, client: Any, batch: int, take: Callable[[], list[Any]], *, locked: bool) -> int:
    """Publish and delete the rows ``take()`` gives, ``batch`` at a time, until fewer come (each batch in a
    transaction when ``locked``: the rows' locks last until they are deleted)."""
    from ..models import OutboxMessage

    total = 0
    while True:
        with transaction.atomic(using=alias) if locked else contextlib.nullcontext():
            rows = take()
            published, failure = _publish_rows(rows, client)
            if published:
                OutboxMessage.objects.using(alias).filter(pk__in=published).delete()
        total += len(published)
        if failure is not None:
            raise failure
        if len(rows) < batch or len(published) < len(rows):
            return total


def _publish_rows(rows: Iterable[OutboxMessage], client: Any) -> tuple[list[int], redis.RedisError | None]:
    """Publish ``rows`` in order until Redis fails: the pks published, and the failure if any.

    A row that cannot be published at all (its facility or message no longer
    valid) stays, with a log line, and the others go on.
    """
    published: list[int] = []
    for row in rows:
        try:
            publish_row(row, client)
        except redis.RedisError as exc:
            return published, exc
        except (ValueError, TypeError) as exc:
            logger.error("outbox message %s cannot be published, left in the outbox: %s", row.uid, exc)
            continue
        published.append(row.pk)
    return published, None


class _Lock:
    """One drain at a time on a database without row locks: a Redis key with a token, released only by its holder."""

    def __init__(self, client: Any, key: str) -> None:
        self.client = client
        self.key = key
        self.token = secrets.token_hex(8)

    def acquire(self, wait: float) -> bool:
        """Take the lock, waiting up to ``wait`` seconds for another holder to release it."""
        deadline = time.monotonic() + wait
        while not self.client.set(self.key, self.token, nx=True, ex=LOCK_SECONDS):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def release(self) -> None:
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError:
            pass  # it expires by itself
