"""Runs the Node tests of the browser client, ws4redis_uwsgi/static/js/ws4redis.js (tests/js/)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
JS_TESTS = REPO / "tests" / "js"


def test_node_tests_of_ws4redis_js_pass():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    # The files are named explicitly: given the directory, Node 20 runs only files named
    # like test-*.js or *.test.js and, finding none, reports success with zero tests.
    files = sorted(str(path.relative_to(REPO)) for path in JS_TESTS.glob("test_*.js"))
    assert files, f"no test_*.js in {JS_TESTS}"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", result.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) > 0, f"no test ran:\n{output}"
    assert failed and int(failed.group(1)) == 0, output
