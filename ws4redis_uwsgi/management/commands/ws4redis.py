"""``manage.py ws4redis <subcommand>``: operating ws4redis_uwsgi from the command line.

Subcommands:

* ``drain-outbox``: publish what the durable outbox holds (rows a crash left
  behind), as the websocket workers' drain does (:mod:`ws4redis_uwsgi.bus.durable`).

Bad arguments exit with status 2 and a usage line; a Redis or database that
cannot be reached exits with status 1 and the reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from ws4redis_uwsgi.bus import durable
from ws4redis_uwsgi.bus.connection import get_client


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


class Command(BaseCommand):
    help = "Operate ws4redis_uwsgi: drain-outbox."

    def subcommands(self) -> dict[str, tuple[str, Callable[[CommandParser], None], Callable[..., None]]]:
        """The subcommands: name -> (help, what adds its arguments, what runs it with the options)."""
        return {
            "drain-outbox": (
                "publish what the durable outbox holds (messages a crash left behind), oldest first",
                self.add_drain_outbox_arguments,
                self.drain_outbox,
            ),
        }

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        for name, (text, add_arguments, _) in self.subcommands().items():
            sub = commands.add_parser(
                name,
                help=text,
                description=text[:1].upper() + text[1:] + ".",
                called_from_command_line=getattr(parser, "called_from_command_line", None),
            )
            add_arguments(sub)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        self.subcommands()[subcommand][2](**options)

    # -- drain-outbox ------------------------------------------------------------------

    def add_drain_outbox_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            metavar="ALIAS",
            help="a database whose outbox to drain (repeatable; default: WS4REDIS_OUTBOX_DATABASES)",
        )
        parser.add_argument(
            "--older-than",
            type=_seconds,
            metavar="SECONDS",
            help="only messages written at least this long ago (default: WS4REDIS_OUTBOX_GRACE, so that "
            "messages the publishing process is about to send are left to it; 0 for all)",
        )

    def drain_outbox(self, databases: list[str] | None, older_than: float | None, **options: Any) -> None:
        aliases = databases or durable.databases()
        unknown = [alias for alias in aliases if alias not in django_settings.DATABASES]
        if unknown:
            raise CommandError(f"unknown database {unknown[0]!r} (not in DATABASES)", returncode=2)
        client = get_client()
        try:
            client.ping()  # an empty outbox may need no Redis: say it is away all the same
        except redis.RedisError as exc:
            raise CommandError(f"Redis cannot be reached: {exc}") from None
        for alias in aliases:
            try:
                # Without row locks, drains take turns: wait for the one a websocket worker runs.
                published = durable.drain(alias, older_than, client=client, wait=durable.LOCK_SECONDS)
            except redis.RedisError as exc:
                raise CommandError(f"Redis cannot be reached: {exc}") from None
            except DatabaseError as exc:
                raise CommandError(f"database {alias!r}: {exc} (are the migrations applied? manage.py migrate)") from None
            if options.get("verbosity", 1) >= 1:
                self.stdout.write(f"{alias}: published {published} message(s) from the outbox")
