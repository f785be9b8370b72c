"""A detached websocket's request descriptor leaves the event loop's epoll set, at no descriptor per handshake."""

from __future__ import annotations

import os
import socket

import gevent
import pytest

from ws4redis_uwsgi.server.sockets import forget_in_event_loop


def registered(epoll_fd: int) -> set[int]:
    """The descriptors in an epoll set, as the kernel lists them."""
    with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
        return {int(line.split()[1]) for line in info if line.startswith("tfd:")}


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_registration_libev_leaves_behind_is_deleted_and_no_descriptor_is_left_open() -> None:
    loop = gevent.get_hub().loop
    if loop.backend != "epoll":
        pytest.skip(f"the event loop uses {loop.backend}, not epoll")
    sockets = [socket.socketpair() for _ in range(20)]
    try:
        for a, _ in sockets:
            watcher = loop.io(a.fileno(), 1)
            watcher.start(lambda: None)
            gevent.sleep(0.001)  # libev applies its descriptor changes in its next iteration
            watcher.stop()  # libev keeps the registration: it counts on close() to drop it
            watcher.close()
        gevent.sleep(0)
        ours = {a.fileno() for a, _ in sockets}
        assert ours <= registered(loop.fileno())
        forget_in_event_loop(sockets[0][0].fileno())
        before = open_descriptors()
        for a, _ in sockets[1:]:
            forget_in_event_loop(a.fileno())
        assert open_descriptors() == before
        assert not ours & registered(loop.fileno())
        forget_in_event_loop(sockets[0][0].fileno())  # no longer registered: nothing happens
    finally:
        for a, b in sockets:
            a.close()
            b.close()


def test_a_descriptor_closed_after_its_watcher_stopped_is_gone_at_once_and_its_number_serves_the_next_socket() -> None:
    """What a websocket's end does (close_descriptor, not gevent's deferred close): libev takes the number again."""
    import fcntl

    from gevent.event import Event

    from ws4redis_uwsgi.server.sockets import close_descriptor

    loop = gevent.get_hub().loop
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    a.close()
    watcher = loop.io(fd, 1)
    watcher.start(lambda: None)
    gevent.sleep(0.001)  # registered in libev's next iteration
    watcher.stop()
    watcher.close()
    close_descriptor(fd)
    with pytest.raises(OSError):
        fcntl.fcntl(fd, fcntl.F_GETFD)  # closed now, not at the loop's next turn
    b.close()
    c, d = socket.socketpair()
    try:
        reused = c.fileno() if c.fileno() == fd else os.dup2(c.fileno(), fd)
        readable = Event()
        watcher = loop.io(reused, 1)
        watcher.start(readable.set)
        d.send(b"x")
        assert readable.wait(2), "libev never reported the reused descriptor readable"
        watcher.stop()
        watcher.close()
    finally:
        if reused != c.fileno():
            os.close(reused)
        c.close()
        d.close()
