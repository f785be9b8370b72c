"""``manage.py ws4redis <subcommand>``: operating ws4redis_uwsgi from the command line.

Subcommands:

* ``publish``: publish a message, to the audiences ``RedisPublisher`` takes;
* ``presence``: who is connected to a facility (:mod:`ws4redis_uwsgi.presence`);
* ``history``: the last messages of one channel's history;
* ``workers``: the websocket workers holding a subscription, from Redis's ``CLIENT LIST``;
* ``drain-outbox``: publish what the durable outbox holds (rows a crash left
  behind), as the websocket workers' drain does (:mod:`ws4redis_uwsgi.bus.durable`).

Bad arguments exit with status 2 and a usage line; a Redis or database that
cannot be reached exits with status 1 and the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from ws4redis_uwsgi.bus import durable
from ws4redis_uwsgi.bus.connection import get_client
from ws4redis_uwsgi.core.exceptions import HandshakeError


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


class Command(BaseCommand):
    help = "Operate ws4redis_uwsgi: publish, presence, history, workers, drain-outbox."

    def subcommands(self) -> dict[str, tuple[str, Callable[[CommandParser], None], Callable[..., None]]]:
        """The subcommands: name -> (help, what adds its arguments, what runs it with the options)."""
        return {
            "publish": (
                "publish a message (the argument, or standard input) to a facility's audiences",
                self.add_publish_arguments,
                self.publish,
            ),
            "presence": ("who is connected to a facility with presence", self.add_presence_arguments, self.presence),
            "history": ("the last messages of one channel's history, oldest first", self.add_history_arguments, self.history),
            "workers": (
                "the websocket workers' subscription connections, as Redis lists them",
                lambda parser: None,
                self.workers,
            ),
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

    # -- publish -----------------------------------------------------------------------

    def add_publish_arguments(self, parser: CommandParser) -> None:
        add_audience_arguments(parser, several=True)
        parser.add_argument("message", nargs="?", default="-", help="the message; '-' or none: read standard input")
        parser.add_argument("--binary", action="store_true", help="a binary frame (standard input read as bytes)")
        parser.add_argument(
            "--expire",
            type=_whole_seconds,
            metavar="SECONDS",
            help="seconds it stays the stored message (default: WS4REDIS_EXPIRE)",
        )

    def publish(
        self,
        facility: str,
        broadcast: bool,
        users: list[str] | None,
        groups: list[str] | None,
        sessions: list[str] | None,
        message: str,
        binary: bool,
        expire: int | None,
        **options: Any,
    ) -> None:
        from ws4redis_uwsgi.publisher import RedisPublisher

        if not (broadcast or users or groups or sessions):
            raise CommandError("say who gets it: --broadcast, --user, --group or --session", returncode=2)
        data: bytes = message.encode() if message != "-" else (sys.stdin.buffer.read() if binary else sys.stdin.read().encode())
        if not data:
            raise CommandError("the message is empty", returncode=2)
        try:
            publisher = RedisPublisher(
                facility=facility, broadcast=broadcast, users=users or (), groups=groups or (), sessions=sessions or ()
            )
        except (ValueError, HandshakeError) as exc:
            raise CommandError(f"invalid facility {facility!r}: {exc}", returncode=2) from None
        receivers = self._redis(
            lambda: publisher.publish_message(data, expire=expire, binary=binary, on_commit=False, durable=False)
        )
        message_id = f" as {publisher.last_message_id}" if getattr(publisher, "last_message_id", None) else ""
        self.stdout.write(f"published{message_id} to {receivers} receiving worker(s)")

    # -- presence ----------------------------------------------------------------------

    def add_presence_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("facility", help="a facility with presence (WS4REDIS_PRESENCE)")
        parser.add_argument("--count", action="store_true", help="only the number of connections (O(1))")

    def presence(self, facility: str, count: bool, **options: Any) -> None:
        from ws4redis_uwsgi import presence

        try:
            connections = self._redis(lambda: presence.count(facility))
            users = {} if count else self._redis(lambda: presence.online_users(facility))
        except (ValueError, TypeError) as exc:  # PresenceOffError among them
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(f"{connections} connection(s)" + ("" if count else f", {len(users)} user(s)"))
        for username in sorted(users):
            self.stdout.write(f"{username}\t{users[username]}")

    # -- history -----------------------------------------------------------------------

    def add_history_arguments(self, parser: CommandParser) -> None:
        add_audience_arguments(parser, several=False)
        parser.add_argument("--limit", type=_positive, default=20, metavar="N", help="messages to show (default 20)")

    def history(
        self,
        facility: str,
        broadcast: bool,
        users: list[str] | None,
        groups: list[str] | None,
        sessions: list[str] | None,
        limit: int,
        **options: Any,
    ) -> None:
        from ws4redis_uwsgi import settings
        from ws4redis_uwsgi.bus import history
        from ws4redis_uwsgi.bus.connection import sharded
        from ws4redis_uwsgi.core.channels import named_channels, validate_facility

        if not history.enabled():
            raise CommandError("history is off (WS4REDIS_HISTORY_LENGTH and WS4REDIS_HISTORY_SECONDS are 0)", returncode=2)
        try:
            validate_facility(facility)
        except HandshakeError as exc:
            raise CommandError(f"invalid facility {facility!r}: {exc}", returncode=2) from None
        channels = named_channels(
            settings.get("WS4REDIS_PREFIX"),
            facility,
            broadcast=broadcast,
            users=users or (),
            groups=groups or (),
            sessions=sessions or (),
            sharded=sharded(),
        )
        if len(channels) != 1:
            raise CommandError("name one channel: --broadcast, --user, --group or --session, once", returncode=2)
        messages = self._redis(lambda: history.recent(get_client(), channels[0], limit))
        for message in messages:
            if message.binary:
                shown = f"<binary, {len(message.payload)} bytes>"
            else:
                shown = message.payload.decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
            self.stdout.write(f"{message.id}\t{shown}")
        if not messages:
            self.stdout.write(f"no history on {channels[0]}")

    # -- workers -----------------------------------------------------------------------

    def workers(self, **options: Any) -> None:
        from ws4redis_uwsgi.bus.connection import HUB_CLIENT_NAME, is_cluster

        client = get_client()
        listed = self._redis(lambda: client.client_list(target_nodes="primaries") if is_cluster(client) else client.client_list())
        entries = [e for node in listed.values() for e in node] if isinstance(listed, dict) else listed
        hubs = [e for e in entries if str(e.get("name", "")).startswith(f"{HUB_CLIENT_NAME}:")]
        self.stdout.write(f"{len(hubs)} subscription connection(s) of websocket workers")
        for entry in sorted(hubs, key=lambda e: str(e["name"])):
            _, host, pid = str(entry["name"]).split(":", 2)
            self.stdout.write(
                f"{host}\tpid {pid}\t{entry.get('sub', 0)} channel(s)\t{entry.get('ssub', 0)} shard channel(s)"
                f"\tconnected {entry.get('age')} s\tfrom {entry.get('addr')}"
            )

    # -- shared ------------------------------------------------------------------------

    def _redis(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except redis.RedisError as exc:
            raise CommandError(f"Redis cannot be reached: {exc}") from None


def add_audience_arguments(parser: CommandParser, *, several: bool) -> None:
    """``--facility`` and the audiences, as RedisPublisher takes them (each repeatable when ``several``)."""
    parser.add_argument("--facility", required=True, help="the facility (the websocket URL's path below WEBSOCKET_URL)")
    parser.add_argument("--broadcast", action="store_true", help="everybody on the facility")
    action = "append" if several else "store"
    for flag, dest, text in (
        ("--user", "users", "a user name"),
        ("--group", "groups", "a group name"),
        ("--session", "sessions", "a session key"),
    ):
        value_help = f"{text}{' (repeatable)' if several else ''}"
        parser.add_argument(
            flag, action=action, dest=dest, metavar=dest[:-1].upper(), help=value_help, type=_listed if not several else str
        )


def _listed(text: str) -> list[str]:
    return [text]


def _whole_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value
