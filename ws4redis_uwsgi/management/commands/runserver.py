"""``manage.py runserver`` serving pages and websockets from one port, under gevent.

Takes the place of Django's ``runserver`` (and of ``django.contrib.staticfiles``',
whose options and static file serving it keeps) when ``ws4redis_uwsgi`` is
listed above ``django.contrib.staticfiles`` in ``INSTALLED_APPS``. The
design is described in :mod:`ws4redis_uwsgi.server.development`.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import gevent
import greenlet
from django.apps import apps
from django.contrib.staticfiles.management.commands.runserver import Command as StaticfilesRunserverCommand
from django.core.handlers.wsgi import WSGIHandler
from django.core.management.base import CommandError
from django.core.management.commands.runserver import Command as RunserverCommand
from django.utils import autoreload
from gevent import monkey

from ws4redis_uwsgi.server import devserver

#: Runs a program with gevent's patching done before it imports anything.
LAUNCHER = Path(__file__).resolve().parents[2] / "gevent_launcher.py"
#: The exit status with which Django's autoreloader asks to be restarted.
RELOAD_EXIT_CODE = 3
#: Seconds a serving child may take to exit after Ctrl-C or SIGTERM.
CHILD_EXIT_TIMEOUT = 5.0


def patched_arguments() -> list[str]:
    """This process's command line with :data:`LAUNCHER` in front of the program (``manage.py`` or ``-m ...``)."""
    interpreter = [sys.executable, *(f"-W{option}" for option in sys.warnoptions)]
    interpreter += [f"-X{key}" if value is True else f"-X{key}={value}" for key, value in sys._xoptions.items()]
    try:
        arguments = [str(argument) for argument in autoreload.get_child_arguments()]
    except RuntimeError as exc:
        arguments = [str(exc)]
    if arguments[: len(interpreter)] != interpreter or len(arguments) == len(interpreter):
        raise CommandError(
            f"cannot start {' '.join(arguments)} with gevent patched first; "
            f"run `{sys.executable} {LAUNCHER} manage.py runserver` instead"
        )
    return [*interpreter, str(LAUNCHER), *arguments[len(interpreter) :]]


def close_websockets() -> None:
    """Close the development application's websockets with 1012 (service restart); clients reconnect."""
    module = sys.modules.get("ws4redis_uwsgi.django_runserver")
    if module is not None:
        module.application.websocket_server.close_all()


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Wait for a child that was told to stop; kill it when it takes too long."""
    try:
        child.wait(CHILD_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class Command(StaticfilesRunserverCommand):
    help = "Starts a development server for pages and websockets on one port (gevent and wsproto)."
    server_cls = devserver.GeventWSGIServer  # type: ignore[assignment]
    #: Where KeyboardInterrupt and SystemExit from signals are raised; set by run().
    main_greenlet: Any = None

    def get_handler(self, *args: Any, **options: Any) -> WSGIHandler:
        if apps.is_installed("django.contrib.staticfiles"):
            return super().get_handler(*args, **options)
        return RunserverCommand.get_handler(self, *args, **options)

    def run(self, **options: Any) -> None:
        if options["use_reloader"] and os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) != "true":
            self.restart_on_reload()
        elif not monkey.is_module_patched("threading"):
            self.restart_patched()
        else:
            # The serving process, patched: Django's autoreloader (or none) and inner_run.
            self.main_greenlet = greenlet.getcurrent()
            super().run(**options)

    def inner_run(self, *args: Any, **options: Any) -> None:
        # Python raises KeyboardInterrupt (and the autoreloader's SystemExit on SIGTERM) in
        # whichever greenlet runs when the signal arrives, which may be a websocket's.
        # Raise them where Django expects them: in the main greenlet.
        gevent.signal_handler(signal.SIGINT, gevent.kill, self.main_greenlet, KeyboardInterrupt)
        gevent.signal_handler(signal.SIGTERM, gevent.kill, self.main_greenlet, SystemExit)
        # Then serve_forever() ends (without autoreload) or the process exits (the autoreloader's child):
        # stop accepting and close websockets with 1012, once.
        devserver.on_stop.append(close_websockets)
        atexit.register(devserver.stop_serving)
        super().inner_run(*args, **options)

    def restart_on_reload(self) -> NoReturn:
        """The autoreloader's parent, as Django's, but each serving child starts through :data:`LAUNCHER`.

        This process is not patched: it only waits for the child and starts
        it again when it exits asking for a reload. On Ctrl-C, which the
        terminal sends to the child too, and on SIGTERM, the child gets
        :data:`CHILD_EXIT_TIMEOUT` seconds to close its websockets.
        """
        arguments = patched_arguments()
        environ = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
        signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
        while True:
            child = subprocess.Popen(arguments, env=environ, close_fds=False)
            try:
                code = child.wait()
            except KeyboardInterrupt:
                stop_child(child)
                sys.exit(0)
            except BaseException:
                child.terminate()
                stop_child(child)
                raise
            if code != RELOAD_EXIT_CODE:
                sys.exit(code)

    def restart_patched(self) -> NoReturn:
        """Run this command line again through :data:`LAUNCHER`, in this process (``--noreload``)."""
        if not getattr(self, "_called_from_command_line", False):
            raise CommandError(
                "runserver needs gevent's monkey-patching before Django is imported; "
                "call it from manage.py, or patch first (from gevent import monkey; monkey.patch_all())"
            )
        arguments = patched_arguments()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(arguments[0], arguments)  # noqa: S606 - the same program, with its own arguments
