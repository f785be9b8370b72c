"""The reads of handshakes and catch-ups: one round trip for concurrent ones, and no Redis at all for a stored value just read.

Every websocket reads the stored message of each of its channels when it
opens. Through redis-py a command costs tens of microseconds of the worker's
CPU, a large share of a handshake, and a reconnect storm asks thousands at
once. Two things keep that down:

- **Batching.** Callers queue their keys and wait; one greenlet sends all
  that is queued as a single MGET and answers each caller, then sends what
  queued meanwhile. A lone caller waits no longer than for its own MGET.
- **No read for a channel the hub just subscribed.** Where Redis speaks
  RESP3, the hub reads a new channel's stored message with its
  ``SUBSCRIBE``, in the same round trip (:meth:`~ws4redis_uwsgi.bus.hub.SubscriptionHub.preread`):
  the handshake whose arrival subscribed it (a user's first visit) finds it here.
- **A short memory of what was read.** A value (or its absence) read while
  the hub holds a confirmed subscription of its channel is kept, with the
  hub's :meth:`~ws4redis_uwsgi.bus.hub.SubscriptionHub.stamp` of that
  moment, for :data:`REMEMBER_SECONDS`, and an absence for
  :data:`REMEMBER_ABSENT_SECONDS`. Every message published on the
  channel reaches the hub and changes the stamp, and so does any loss of the
  subscription: a kept value is served only while nothing was published on
  its channel since it was read. So the websockets of one channel (a
  broadcast, a group) opening at once cost a read per half second, not one
  each, and the next page's websocket of a user, on channels the hub kept
  subscribed meanwhile (``WS4REDIS_CHANNEL_LINGER``), costs none where
  nothing is stored. What no message announces shows
  within those seconds: the key's expiry (a value's: an absence cannot
  expire), or a program that SETs or DELs it without publishing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import gevent
import redis
from gevent.event import AsyncResult

from .connection import is_cluster, mget, pipelined
from .held_connection import HeldConnection

#: Seconds a handshake waits for the batched read of its stored messages at most.
READ_TIMEOUT = 30.0
#: Seconds a value read from Redis is served again at most (see the module docstring).
REMEMBER_SECONDS = 0.5
#: Seconds the absence of a value is served again at most: what a page change of a user whose
#: channels hold nothing reads (no expiry can change an absence; a publish changes the stamp).
REMEMBER_ABSENT_SECONDS = 5.0


class Stamps(Protocol):
    def stamp(self, channel: str) -> int | None: ...
    def preread(self, channel: str) -> tuple[int, Any, float] | None: ...


class _NoStamps:
    def stamp(self, channel: str) -> int | None:
        return None

    def preread(self, channel: str) -> tuple[int, Any, float] | None:
        return None


class _Batches:
    """The batching both readers share: callers queue a request and wait; one greenlet answers all that queued.

    While it waits for Redis, more callers queue: they go in the next batch.
    A lone caller waits no longer than for its own round trip.
    """

    _what = "a batched read"

    def __init__(self, client: Any) -> None:
        self._client = client
        #: One Redis: the reader greenlet's own connection (see :mod:`.held_connection`); a Cluster routes by slot.
        self._held = None if is_cluster(client) else HeldConnection(client)
        self._queued: list[tuple[Any, AsyncResult]] = []
        self._reader: gevent.Greenlet | None = None

    def _ask(self, request: Any) -> Any:
        result: AsyncResult = AsyncResult()
        self._queued.append((request, result))
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._serve)
        # The client's socket timeout ends a stuck read long before this; the bound
        # is for a reader greenlet that was killed and so never answers.
        result.wait(READ_TIMEOUT)
        if not result.ready():
            raise redis.TimeoutError(f"no answer to {self._what} within {READ_TIMEOUT:g} s")
        return result.get()

    def _serve(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                replies = self._answer([request for request, _ in batch])
            except Exception as exc:
                for _, result in batch:
                    result.set_exception(exc)
                continue
            for (_, result), reply in zip(batch, replies, strict=True):
                result.set(reply)

    def _answer(self, requests: list[Any]) -> list[Any]:
        """One reply per request, in their order, from one round trip."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the reader's own connection (:func:`ws4redis_uwsgi.process.forget` and ``reset`` call it)."""
        if self._held is not None:
            self._held.close()

    def _pipelined(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to ``commands``, sent in one pipeline."""
        if self._held is not None:
            return self._held.execute(commands)
        return pipelined(self._client, commands)


class BatchedReader(_Batches):
    """The stored messages of many websockets' channels (see the module docstring)."""

    _what = "MGET"

    def __init__(self, client: redis.Redis, stamps: Stamps | None = None) -> None:
        super().__init__(client)
        self._stamps: Stamps = stamps if stamps is not None else _NoStamps()
        #: key -> (monotonic deadline, hub stamp when read, value)
        self._kept: dict[str, tuple[float, int, Any]] = {}
        self._next_purge = 0.0

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where unset), as ``client.mget`` returns them; raises what it raises."""
        now = time.monotonic()
        known: dict[str, Any] = {}
        missing: list[str] = []
        for key in keys:
            kept = self._kept.get(key)
            if kept is None or kept[0] <= now or kept[1] != self._stamps.stamp(key):
                kept = self._from_hub(key, now)
            if kept is not None:
                known[key] = kept[2]
            else:
                missing.append(key)
        if missing:
            known.update(zip(missing, self._ask(missing), strict=True))
        return [known[key] for key in keys]

    def _from_hub(self, key: str, now: float) -> tuple[float, int, Any] | None:
        """What the hub read for ``key`` with its channel's subscription, kept from now on like a value read here.

        None when it read nothing for it, or a message passed since.
        """
        read = self._stamps.preread(key)
        if read is None:
            return None
        stamp, value, read_at = read
        kept = (_served_until(read_at, value), stamp, value)
        if kept[0] <= now:
            return None
        self._kept[key] = kept
        return kept

    def _answer(self, requests: list[list[str]]) -> list[list[bytes | None]]:
        keys = list(dict.fromkeys(key for wanted in requests for key in wanted))
        # Taken before the MGET: a message that passes the hub after this changes the stamp.
        stamps = {key: self._stamps.stamp(key) for key in keys}
        read = self._held.execute([("MGET", *keys)])[0] if self._held is not None else mget(self._client, keys)
        values = dict(zip(keys, read, strict=True))
        self._keep(values, stamps)
        return [[values[key] for key in wanted] for wanted in requests]

    def _keep(self, values: dict[str, Any], stamps: dict[str, int | None]) -> None:
        """Remember ``values`` for REMEMBER_SECONDS, those whose stamp held since the read."""
        now = time.monotonic()
        for key, value in values.items():
            stamp = stamps[key]
            if stamp is not None and stamp == self._stamps.stamp(key):
                self._kept[key] = (_served_until(now, value), stamp, value)
        if now >= self._next_purge:
            self._next_purge = now + REMEMBER_SECONDS
            self._kept = {key: kept for key, kept in self._kept.items() if kept[0] > now}


def _served_until(read_at: float, value: Any) -> float:
    """Until when a value read at ``read_at`` may be served again: a value briefly, an absence longer."""
    return read_at + (REMEMBER_SECONDS if value is not None else REMEMBER_ABSENT_SECONDS)


class BatchedPipeline(_Batches):
    """Read commands of many websockets in one pipeline, each distinct command sent once.

    After a worker restarts, thousands of resuming clients come back at once
    and each reads its backlog from history: the same XRANGE after the same
    position, the same oldest entry and trimmed id, for nearly all of them.
    Callers queue their commands and wait; one greenlet sends what is queued,
    every distinct command once, and answers each caller with the replies to
    its own, in its order; then it sends what queued meanwhile. Every caller
    queued before the pipeline went out, so each gets what Redis held after
    it asked (a websocket asks only once its subscriptions are confirmed:
    whatever is published after the read reaches it live). Only read
    commands go through here: a reply is shared among callers.
    """

    _what = "a pipeline"

    def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to ``commands``, as ``pipeline.execute()`` gives them; raises what it raises."""
        return self._ask(commands)  # type: ignore[no-any-return]

    def _answer(self, requests: list[list[tuple[Any, ...]]]) -> list[list[Any]]:
        distinct = list(dict.fromkeys(command for commands in requests for command in commands))
        replies = dict(zip(distinct, self._pipelined(distinct), strict=True))
        return [[replies[command] for command in commands] for commands in requests]
