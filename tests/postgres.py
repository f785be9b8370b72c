"""A private PostgreSQL server for the tests, on a free port, like tests/servers.py's RedisServer.

It uses the server binaries of Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``; ``initdb`` on PATH is preferred, for
other installs): ``initdb`` makes a throw-away cluster in a directory of its
own under /tmp and ``postgres`` serves it on 127.0.0.1 and a Unix socket in
that directory, with fsync and everything else that costs time and keeps
nothing of value turned off. Nothing is left behind: ``stop()`` shuts the
server down (and kills what remains of it) and deletes the directory. The
system cluster Debian may have started on port 5432 is neither used nor
touched.

PostgreSQL refuses to run as root. Under root (containers, CI) ``initdb`` and
``postgres`` run as the ``postgres`` user the Debian package creates: the
directory is made by root and handed to that user, and both programs are
started by ``subprocess.Popen(user=..., group=..., extra_groups=[])`` rather
than through ``runuser`` or ``su``, so that the server is this process's own
child, its pid the postmaster's, and stopping it needs no wrapper to pass
signals on. Under any other user they run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tests.servers import free_port, wait_for

if TYPE_CHECKING:
    import psycopg

INSTALL_HINT = "apt-get install postgresql"
#: The role and database the tests use (the cluster's superuser is ``postgres``).
ROLE = "ws4redis"
DATABASE = "ws4redis_tests"


def _version(bindir: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir))


def find_bindir() -> str | None:
    """The directory of ``initdb`` and ``postgres``: on PATH, else Debian's newest, else None."""
    initdb = shutil.which("initdb")
    candidates = [os.path.dirname(initdb)] if initdb else []
    candidates += sorted((os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")), key=_version, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, exe), os.X_OK) for exe in ("initdb", "postgres")):
            return bindir
    return None


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ``postgres`` when this process is root (PostgreSQL will not run as root), else None (us)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def unavailable() -> str | None:
    """Why no PostgreSQL server can be started here, or None when one can."""
    if find_bindir() is None:
        return f"PostgreSQL is not installed (no initdb on PATH nor in /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
    try:
        server_user()
    except KeyError:
        return f"running as root and there is no 'postgres' user to run PostgreSQL as: {INSTALL_HINT}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver for Django: pip install 'psycopg[binary]' (the test extra has it)"
    return None


class PostgresServer:
    """A throw-away PostgreSQL cluster with a role and a database for the tests."""

    def __init__(self, port: int | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_HINT}")
        self.bindir = Path(bindir)
        self.port = port or free_port()
        self.user = server_user()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where the tests' database is, as the test site's WS4REDIS_TEST_DB reads it."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    def _run_as(self) -> dict[str, Any]:
        """Popen arguments that start a program as the server's user, in the server's directory."""
        assert self.dir is not None
        kwargs: dict[str, Any] = {"cwd": self.dir}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return kwargs

    def initdb_command(self) -> list[str]:
        """A cluster whose superuser is ``postgres``, trusting every local connection, written without fsync."""
        assert self.dir is not None
        data = str(self.dir / "data")
        return [
            str(self.bindir / "initdb"),
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]

    def command(self) -> list[str]:
        """The ``postgres`` command line: 127.0.0.1 and a private socket directory, durability off."""
        assert self.dir is not None
        settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "16MB",
            "max_wal_size": "256MB",
            "autovacuum": "off",
            "logging_collector": "off",
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port)]
        command += ["-h", "127.0.0.1", "-k", str(self.dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def start(self) -> PostgresServer:
        self.dir = Path(tempfile.mkdtemp(prefix="ws4redis-pg-"))
        try:
            if self.user is not None:
                os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
            with open(self.log_path, "ab") as log:
                subprocess.run(
                    self.initdb_command(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=120,
                    **self._run_as(),
                )
                self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, **self._run_as())
            wait_for(self._accepts_connections, 30, f"PostgreSQL on port {self.port}")
            with self.connect("postgres") as conn:
                conn.execute(f"CREATE ROLE {ROLE} LOGIN")
                conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        except BaseException as exc:
            log_text = self.log_text()
            self.stop()
            if isinstance(exc, (subprocess.CalledProcessError, TimeoutError)):
                raise RuntimeError(f"PostgreSQL did not start: {exc}\n{log_text}") from exc
            raise
        return self

    def connect(self, dbname: str = DATABASE, user: str = "postgres") -> psycopg.Connection[Any]:
        """A psycopg connection in autocommit mode, by default the superuser's to the tests' database."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname=dbname, connect_timeout=2, autocommit=True)

    def _accepts_connections(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc and self.proc.returncode}:\n{self.log_text()}")
        import psycopg

        try:
            with self.connect("postgres") as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:  # not listening yet, or "the database system is starting up"
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (AssertionError, OSError):
            return ""

    def stop(self) -> None:
        """Fast shutdown; what has not gone after 10 s is killed, the postmaster's children with it. Then delete it all."""
        if self.proc is not None:
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            self.proc.send_signal(signal.SIGINT)  # "fast": ends the sessions, checkpoints, exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for child in children:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(children, timeout=5)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
