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

import mmap
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Linux's value (asm-generic/mman-common.h), which Python's mmap module does not name before 3.12.
_MADV_WIPEONFORK = 18


def _wiped_on_fork() -> mmap.mmap | None:
    """A byte set to 1 here that a forked child finds 0: a page the kernel zeroes in the child (``MADV_WIPEONFORK``).

    A websocket handshake asks for a dozen resources; comparing
    ``os.getpid()`` each time was a dozen system calls. Python's own fork
    hooks (``os.register_at_fork``) would cost nothing, but uWSGI forks its
    workers in C without running them (unless ``--py-call-osafterfork``);
    the kernel wipes this page whoever forks. None where it cannot (Linux
    before 4.14, other systems): the pid is compared then.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        flag = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)  # anonymous and private: madvise refuses others
        flag.madvise(getattr(mmap, "MADV_WIPEONFORK", _MADV_WIPEONFORK))
    except (OSError, ValueError):
        return None
    flag[0] = 1
    return flag


_flag = _wiped_on_fork()
_pid = os.getpid()
_resources: dict[str, Any] = {}


def _forget_a_parents() -> None:
    """Drop what a parent process made, once, in a process forked from it (its objects are the parent's to close)."""
    global _pid
    if _flag is not None:
        if _flag[0]:
            return
        _flag[0] = 1  # this child's page is wiped in its own children
    elif _pid == os.getpid():
        return
    _pid = os.getpid()
    _resources.clear()


def resource(name: str, factory: Callable[[], T]) -> T:
    """This process's resource ``name``, made by ``factory()`` on first use."""
    _forget_a_parents()
    try:
        return _resources[name]  # type: ignore[no-any-return]
    except KeyError:
        value = _resources[name] = factory()
        return value


def existing(name: str) -> Any:
    """This process's resource ``name`` if it was made, else None (never makes it)."""
    _forget_a_parents()
    return _resources.get(name)


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
