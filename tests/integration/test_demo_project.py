"""The demo project's own tests (deploy/demo/chat/tests.py), run as its developers run them: ``manage.py test``.

They use ws4redis_uwsgi.testing: captured publishes for the views, and a live
redis-server and uWSGI worker for what browsers receive. They run in a process
of their own, with the demo's settings (this process has the test site's).
``WS4REDIS_CONNECTION`` names a port where nothing listens: the view tests
must need no Redis, and the live tests use the one the kit starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import REPO, TIMING, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_the_demo_projects_tests_pass(tmp_path):
    env = {
        **os.environ,
        "DEMO_RUN": str(tmp_path),
        "PYTHONPATH": str(REPO),  # this checkout's ws4redis_uwsgi
        "WS4REDIS_CONNECTION": f"redis://127.0.0.1:{free_port()}/0",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py's default: demo.settings
    run = subprocess.run(
        [sys.executable, "manage.py", "test", "chat", "--noinput", "-v", "2"],
        cwd=REPO / "deploy" / "demo",
        env=env,
        capture_output=True,
        text=True,
        timeout=150 * TIMING,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Ran 6 tests" in run.stderr and "\nOK" in run.stderr, run.stderr
