"""The processes a run starts, and what ``/proc`` says of them.

Every server and helper is a :class:`Child` in a session of its own, listed in
``LIVE`` until it is stopped, so that whatever happens the run leaves none
behind (``stop_all_live``). CPU, RSS and descriptors are read from ``/proc``
(Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# -- /proc --------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # fields from 3 (state) on


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def proc_kernel_cpu(pid: int) -> float:
    """stime of ``pid`` in seconds: the part of :func:`proc_cpu` spent in the kernel (0 if it is gone)."""
    fields = _stat_fields(pid)
    return int(fields[12]) / CLK_TCK if fields else 0.0


def proc_rss_kib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE / 1024
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy (not idle, not iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


class CpuWindow:
    """CPU seconds of named groups of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.before: dict[int, float] = {}
        self.delta: dict[str, float] = {}
        self.per_pid: dict[int, float] = {}
        #: Of ``delta``, the kernel's part (stime) per group.
        self.kernel: dict[str, float] = {}
        self._kernel_before: dict[int, float] = {}
        self.wall = 0.0
        self.others = 0.0

    def start(self) -> CpuWindow:
        self.before = {pid: proc_cpu(pid) for pids in self.groups.values() for pid in pids}
        self._kernel_before = {pid: proc_kernel_cpu(pid) for pids in self.groups.values() for pid in pids}
        self._machine = machine_busy()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        self.wall = time.monotonic() - self._t0
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                used = max(0.0, proc_cpu(pid) - self.before.get(pid, 0.0))
                self.per_pid[pid] = used
                total += used
            self.delta[name] = total
            self.kernel[name] = sum(max(0.0, proc_kernel_cpu(pid) - self._kernel_before.get(pid, 0.0)) for pid in pids)
        self.others = max(0.0, machine_busy() - self._machine - sum(self.delta.values()))
        return self

    def share(self, seconds: float) -> float:
        """CPU seconds as a fraction of one core over the window."""
        return seconds / self.wall if self.wall else float("nan")


# -- processes this run starts ------------------------------------------------------------------

#: Every server and helper process still running, stopped on exit whatever happens.
LIVE: set[Any] = set()


def stop_all_live() -> None:
    for thing in list(LIVE):
        with contextlib.suppress(Exception):
            thing.stop()


def raise_open_files(needed: int) -> None:
    """The open-files limit up to its hard limit; a warning when that is below ``needed``."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        print(f"warning: the open-files limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[0]}) is below {needed}")


def stop_all_and_clean(run_dir: Path, keep: bool) -> None:
    """Every server and helper stopped; ``run_dir`` removed, or kept and its path printed."""
    stop_all_live()
    if keep:
        print(f"\nlogs kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_stopping_all(run: Callable[[], int]) -> int:
    """``run()``'s exit status; every server and helper is stopped at exit, on SIGTERM and on Ctrl-C (then 130)."""
    atexit.register(stop_all_live)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server", file=sys.stderr)
        stop_all_live()
        return 130


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], object], timeout: float, what: str, alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Child:
    """A process of ours in a session of its own: SIGTERM, then SIGKILL to its whole group."""

    proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, pipes: bool = False) -> None:
        """Start ``cmd``; its output goes to ``log_path`` (only stderr there with ``pipes``: stdin and stdout are ours)."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            start_new_session=True,
        )
        LIVE.add(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group it leads (uWSGI workers, say).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        with contextlib.suppress(Exception):
            self._log.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE")}
    env.update(extra)
    return env
