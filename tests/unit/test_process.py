"""Per-process resources (ws4redis_uwsgi.process): a forked worker makes its own, the parent keeps its."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

import pytest

from ws4redis_uwsgi import process


class Resource:
    closed = False

    def close(self) -> None:
        self.closed = True


def c_fork() -> int:
    """fork(2) itself, as uWSGI forks its workers: Python's fork hooks (``os.register_at_fork``) do not run."""
    return ctypes.CDLL(None, use_errno=True).fork()  # type: ignore[no-any-return]


@pytest.fixture(params=["wiped page", "pid"])
def detection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way a fork is noticed: the page the kernel wipes in a child (Linux), the pid compared (elsewhere)."""
    if request.param == "pid":
        monkeypatch.setattr(process, "_flag", None)
    elif sys.platform.startswith("linux"):
        assert process._flag is not None and process._flag[0] == 1  # Linux 4.14 or later: the page is there
    return request.param


@pytest.mark.parametrize("fork", [os.fork, c_fork], ids=["os.fork", "fork(2)"])
def test_a_forked_child_gets_a_fresh_resource_and_the_parent_keeps_its_own(fork: Callable[[], int], detection: str):
    parent = process.resource("fork test", Resource)
    pid = fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        status = 1
        try:
            fresh = process.existing("fork test") is None
            child = process.resource("fork test", Resource)
            status = 0 if fresh and child is not parent and process.resource("fork test", Resource) is child else 2
            if status == 0 and fork() == 0:  # a grandchild: noticed again (the child armed its own page)
                os._exit(0 if process.existing("fork test") is None else 3)
            status = status or os.waitstatus_to_exitcode(os.wait()[1])
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
