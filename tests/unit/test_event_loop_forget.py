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
