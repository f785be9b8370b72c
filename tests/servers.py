"""Real redis-server and uWSGI processes for tests and benchmarks, on free ports.

Every process is started on a port the kernel just handed out, waited for by
condition (it answers), and stopped on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

# One copy of these, shared with the users' testing kit (ws4redis_uwsgi.testing).
from ws4redis_uwsgi.testing.live import free_port, redis_server_executable

REPO = Path(__file__).resolve().parent.parent
#: Scales every wait for slow machines (WS4REDIS_TIMING=2 doubles them).
TIMING = float(os.environ.get("WS4REDIS_TIMING", "1"))


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout * TIMING
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """A private redis-server that keeps nothing on disk."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir or Path("/tmp")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, bind: str = "127.0.0.1") -> list[str]:
        """The redis-server command line: listening on ``bind``, nothing on disk."""
        return [
            redis_server_executable(),
            "--port",
            str(self.port),
            "--bind",
            bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--maxclients",
            "10000",
        ]

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL)
        wait_for(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """Kill -9: the way a crash looks to clients."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    stop = kill


class UwsgiServer:
    """uWSGI serving the websocket entry point for the test site, one worker, gevent."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        cores: int = 2000,
        extra: list[str] | None = None,
        log_path: Path | None = None,
        module: str = "ws4redis_uwsgi.wsgi_websocket:application",
        pythonpath: list[str] | None = None,
        request_log: bool = False,
    ) -> None:
        """``request_log``: write uWSGI's line per request (left out by default, as in production)."""
        self.module = module
        self.request_log = request_log
        self.pythonpath = [str(REPO), *(pythonpath or [])]
        self.port = free_port()
        self.env = {**os.environ, **env}
        self.cores = cores
        self.extra = extra or []
        self.log_path = log_path or Path(f"/tmp/ws4redis-uwsgi-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self, address: str = "127.0.0.1") -> list[str]:
        """The uWSGI command line: one worker under gevent, serving websockets on ``address``."""
        exe = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
        if exe is None:
            raise RuntimeError("uwsgi is not installed: pip install uWSGI (needs libssl-dev to build)")
        return [
            exe,
            "--http-socket",
            f"{address}:{self.port}",
            "--http-websockets",
            "--gevent",
            str(self.cores),
            # As in uwsgi.ini.example (after --gevent, which raises it to 30): drop a client silent for 1 s.
            "--socket-timeout",
            "1",
            "--master",
            "--workers",
            "1",
            "--module",
            self.module,
            *(arg for path in self.pythonpath for arg in ("--pythonpath", path)),
            "--listen",
            "1024",
            "--die-on-term",
            "--buffer-size",
            "8192",
            "--need-app",
            *([] if self.request_log else ["--disable-logging"]),
            "--max-fd",
            "20000",
            *self.extra,
        ]

    def start(self) -> UwsgiServer:
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) and self.worker_pids(), 30, f"uWSGI on port {self.port}")
        return self

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
