"""The stored-message reads of concurrent handshakes in one MGET."""

from __future__ import annotations

import gevent
import redis
from gevent.event import AsyncResult

from .connection import mget

#: Seconds a handshake waits for the batched read of its stored messages at most.
READ_TIMEOUT = 30.0


class BatchedReader:
    """The GETs of many websockets in one MGET: a burst of handshakes costs a round trip per batch.

    Every websocket reads the stored message of its channels when it opens.
    Through redis-py each command costs tens of microseconds of CPU, a large
    share of an anonymous handshake, and a reconnect storm asks thousands at once.
    Callers queue their keys and wait; one greenlet sends all that is queued
    as a single MGET and answers each caller, then sends what queued
    meanwhile (a burst of handshakes on one worker sends far fewer MGETs
    than handshakes). A lone caller waits no longer than for its own MGET.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._queued: list[tuple[list[str], AsyncResult]] = []
        self._reader: gevent.Greenlet | None = None

    def mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where unset), as ``client.mget`` returns them; raises what it raises."""
        result: AsyncResult = AsyncResult()
        self._queued.append((keys, result))
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read)
        # The client's socket timeout ends a stuck MGET long before this; the bound
        # is for a reader greenlet that was killed and so never answers.
        result.wait(READ_TIMEOUT)
        if not result.ready():
            raise redis.TimeoutError(f"no answer to MGET within {READ_TIMEOUT:g} s")
        return result.get()  # type: ignore[no-any-return]

    def _read(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            keys = list(dict.fromkeys(key for wanted, _ in batch for key in wanted))
            try:
                values = dict(zip(keys, mget(self._client, keys), strict=True))
            except Exception as exc:
                for _, result in batch:
                    result.set_exception(exc)
                continue
            for wanted, result in batch:
                result.set([values[key] for key in wanted])
