"""One live message to every listener of a channel: the hub's loop over its websockets.

Why a loop in C: a live message to an idle websocket is one write of a frame
built once per worker, most of whose cost is the kernel's. The Python around
that write (the subscriber's ``deliver``, the outbox's ``take_live``, the
socket's ``try_write``) is what ws4redis_uwsgi adds to a bare hub that writes
the frame to every socket and does nothing else (``bench/peersite/wsgi_bare_hub.py``):
1.10-1.30 times the bare hub's CPU per delivery with the loop in Python,
1.00-1.12 with this one (bench/README.md, "Where the goals are not met yet").

The rule that keeps it correct: the C loop takes only the common case (a
message of no websocket and without a uid, to a plain client whose outbox
holds nothing and, for a message with an id, has a position in its channel
and did not resume, through a socket that is free and takes the whole frame
at once), and exactly as the Python methods
do it. Anything else it hands to the listener's own ``deliver``, with
nothing changed: those methods stay the one definition of what a delivery
does, the C loop a shortcut through their success path. Each method it
copies is registered here (:func:`copied_in_c`), and a listener, outbox or
socket whose class overrides one goes the Python way.

The C loop goes in two passes: it decides for every listener first, then
writes to every socket that takes the frame, then calls ``deliver`` for the
rest. The decisions read each websocket's subscriber, outbox and socket,
which the kernel's writes push out of the CPU's caches: between two writes
each read waits for memory, one after the other they overlap (in one
process on 1,000 socket pairs, 7.0 µs per delivery against 8.1 for one
pass, the bare ``os.write`` loop 7.3; in the bench's worker 3-4% less).
No Python code runs between the first two passes, so what the first found
still holds in the second.

A listener whose ``deliver`` raises (an ``Exception``: a subscriber class of
the site's, a bug) does not keep the message from the others, in either
loop: :func:`delivery_failed` logs it and tells that listener to catch up
from history, as after a lost subscription. Anything else (``GreenletExit``,
``KeyboardInterrupt``) ends the loop at once and goes to the hub.

Without a C compiler at install time the extension is missing and the
Python loop runs (:data:`IN_C` says which).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from ..core import envelope
from ..core.outbox import Outbox
from ..core.text import loggable
from ..core.throttle import Throttle

logger = logging.getLogger("ws4redis_uwsgi")

_fanout: ModuleType | None
try:
    from . import _fanout
except ImportError:  # built without a C compiler
    _fanout = None

#: Whether the loop runs in C.
IN_C = _fanout is not None

F = TypeVar("F", bound=Callable[..., Any])


def copied_in_c(name: str) -> Callable[[F], F]:
    """Mark a method whose success path ``_fanout.c`` copies (``deliver``, ``take_live``, ``try_write``).

    Change the method, change the C code with it: the tests run both loops
    on the same cases (``tests/unit/test_fanout.py``).
    """

    def register(method: F) -> F:
        if _fanout is not None:
            _fanout.register(name, method)
        return method

    return register


def deliver_each(listeners: tuple[Any, ...], message: envelope.BusMessage) -> None:
    """The loop in Python: each listener's ``deliver``."""
    for listener in listeners:
        try:
            listener.deliver(message)
        except Exception as error:
            delivery_failed(listener, message, error)


#: Seconds between two log lines of failed deliveries at least: a broken subscriber class fails for every message.
FAILURE_LOG_INTERVAL = 10.0
#: The failed deliveries of this process, and when one was last logged.
failures = Throttle(FAILURE_LOG_INTERVAL)


def delivery_failed(listener: Any, message: envelope.BusMessage, error: Exception) -> None:
    """A listener's ``deliver`` raised ``error``: logged, and the listener told to catch up (it may have missed ``message``).

    The other listeners got the message all the same (both loops go on).
    One line with the traceback per :data:`FAILURE_LOG_INTERVAL`, which
    counts the failures it did not log.
    """
    count = failures.due(time.monotonic())
    if count is not None:
        more = f" ({count - 1} more since the last report)" if count > 1 else ""
        logger.error(
            "delivery of a message on %s to %s failed%s; it catches up from history",
            loggable(message.channel or ""),
            type(listener).__name__,
            more,
            exc_info=error,
        )
    try:
        listener.resync()
    except Exception:
        logger.exception("a listener whose delivery failed could not be told to catch up")


#: ``deliver_all(listeners, message)``: hand ``message`` to every listener of the tuple ``listeners``.
deliver_all: Callable[[tuple[Any, ...], envelope.BusMessage], None] = _fanout.deliver_all if _fanout is not None else deliver_each

# The outbox lives in core, which knows nothing of the bus: its method is registered from here.
copied_in_c("take_live")(Outbox.take_live)
if _fanout is not None:
    _fanout.on_failure(delivery_failed)
