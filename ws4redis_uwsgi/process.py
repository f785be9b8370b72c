"""What this package keeps per process, in one place.

A websocket worker holds a few long-lived things: its subscription hub, a
pool of Redis connections for commands, the batched reader of stored
messages, the backlog budget, the greenlets that do database work, an
origin counter, the compiled auth queries; a Django process holds the
publishers' Redis clients. uWSGI forks workers after the application was
imported, so nothing made before the fork may be shared with the children:
every resource here is made on first use in the process that uses it, and a
process that finds state of another pid (it was forked) starts afresh.
:func:`reset` forgets everything (tests call it between tests), closing what
can be closed. Nothing else in the package keeps a module-level registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_pid = os.getpid()
_resources: dict[str, Any] = {}


def resource(name: str, factory: Callable[[], T]) -> T:
    """This process's resource ``name``, made by ``factory()`` on first use."""
    global _pid
    if _pid != os.getpid():  # forked: what the parent made is not ours
        _resources.clear()
        _pid = os.getpid()
    try:
        return _resources[name]  # type: ignore[no-any-return]
    except KeyError:
        value = _resources[name] = factory()
        return value


def existing(name: str) -> Any:
    """This process's resource ``name`` if it was made, else None (never makes it)."""
    return _resources.get(name) if _pid == os.getpid() else None


def forget(name: str) -> None:
    """Drop resource ``name`` (closing it when it can be), so that the next use makes it again."""
    _close(_resources.pop(name, None))


def reset() -> None:
    """Forget every resource of this process, closing those that can be closed."""
    while _resources:
        _close(_resources.popitem()[1])


def _close(value: Any) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass
