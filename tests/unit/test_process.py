"""Per-process resources (ws4redis_uwsgi.process): a forked worker makes its own, the parent keeps its."""

from __future__ import annotations

import os

from ws4redis_uwsgi import process


class Resource:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_forked_child_gets_a_fresh_resource_and_the_parent_keeps_its_own():
    parent = process.resource("fork test", Resource)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        status = 1
        try:
            fresh = process.existing("fork test") is None
            child = process.resource("fork test", Resource)
            status = 0 if fresh and child is not parent and process.resource("fork test", Resource) is child else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert process.resource("fork test", Resource) is parent
    assert process.existing("fork test") is parent and not parent.closed


def test_forget_closes_a_resource_and_the_next_use_makes_it_again():
    first = process.resource("forget test", Resource)
    process.forget("forget test")
    assert first.closed
    assert process.existing("forget test") is None
    assert process.resource("forget test", Resource) is not first
