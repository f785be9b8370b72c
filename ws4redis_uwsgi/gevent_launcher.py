"""Run a Python program with gevent's monkey-patching done before the program imports anything.

::

    python /path/to/ws4redis_uwsgi/gevent_launcher.py manage.py runserver ...
    python /path/to/ws4redis_uwsgi/gevent_launcher.py -m django runserver ...

ws4redis_uwsgi's ``runserver`` command starts its serving process through
this file (see :mod:`ws4redis_uwsgi.server.development`). Patching after
Django was imported is not enough: objects made at import time, such as the
``threading.local`` that holds Django's database connections, would stay
per OS thread and be shared by every request the server runs concurrently.

It is run as a file, not with ``-m``, so it works however the package was
installed; it imports nothing from the package.
"""

import os
import sys

# Python put this file's directory first on sys.path; the program gets its own below.
if sys.path and os.path.realpath(sys.path[0] or os.curdir) == os.path.dirname(os.path.realpath(__file__)):
    del sys.path[0]

from gevent import monkey

monkey.patch_all()

import runpy  # noqa: E402

USAGE = "usage: gevent_launcher.py (SCRIPT | -m MODULE) [ARGUMENTS...]"


def main(argv: list[str]) -> None:
    """Run ``argv`` (a script and its arguments, or ``-m`` and a module) as ``python`` would."""
    if len(argv) >= 2 and argv[0] == "-m":
        if not sys.flags.safe_path:
            sys.path.insert(0, os.getcwd())  # what `python -m module` puts first
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv and argv[0] != "-m":
        if not sys.flags.safe_path:
            sys.path.insert(0, os.path.dirname(os.path.realpath(argv[0])))  # what `python script.py` puts first
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
