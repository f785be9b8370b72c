"""The websocket loop, independent of the server that runs it.

:class:`WebsocketWSGIServer` is a WSGI application: it validates the
upgrade request, loads the session and user, agrees on channels, upgrades
(through the adapter's :meth:`~WebsocketWSGIServer.upgrade_websocket`) and
then loops: wait until the socket is readable or the hub delivered a
message, read everything the client sent, write everything waiting.
Adapters (uWSGI, the development server) only move bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import django
import gevent
import redis
from django.apps import apps
from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied
from django.core.handlers.wsgi import WSGIRequest

from .. import presence, settings
from ..bus import history, revocations
from ..bus.budget import BacklogBudgetError
from ..bus.resources import backlog_budget
from ..bus.store import RedisMessage
from ..bus.subscriber import RedisSubscriber
from ..core.channels import facility_from_path, facility_of_request, parse_query, restrict
from ..core.close_codes import CloseCode, restart_spread
from ..core.envelope import BusMessage, outgoing
from ..core.exceptions import HandshakeError, ServerBusyError, SlowConsumerError, TooManyChannelsError
from ..core.handshake import check_origin, check_upgrade_request, offered_protocols, offered_token
from ..core.inbound import InboundPolicy, Verdict
from ..core.outbox import GAP_NOTICE, Opening
from ..core.positions import Order
from ..core.text import loggable
from ..django.identity import groups_read_with, load_session_and_user, load_without_reading
from ..django.tokens import Claims, TokenError, read_token
from . import limits
from .adapter import StartResponse, Waiter, Websocket, close_for_rule
from .authority import get_authority
from .db_workers import get_workers
from .limits import BACKLOG_RETRY, MESSAGES_PER_TURN
from .metrics import get_metrics
from .session import Session, Turn

logger = logging.getLogger("ws4redis_uwsgi")


class WebsocketWSGIServer:
    """Serves websockets on ``WEBSOCKET_URL``; subclass and implement the adapter methods."""

    #: Longest the loop sleeps without looking at the socket, so the adapter
    #: can answer or send pings and notice dead peers.
    poll_interval = 5.0

    def __init__(self, redis_connection: redis.Redis | None = None) -> None:
        self._redis_connection = redis_connection
        #: Websockets this process serves now; compared with max_connections().
        self.active_connections = 0
        #: Set by shutdown(): every loop closes its websocket with 1012.
        self.stopping = False
        #: Set by shutdown(): seconds over which the closed websockets' clients should spread their return.
        self.restart_spread = 0.0
        self._waiters: set[Waiter] = set()
        if not apps.ready:
            # ws4redis sites' own wsgi_websocket.py never called django.setup().
            django.setup(set_prefix=False)

    # -- adapter methods ------------------------------------------------------------

    def upgrade_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> Websocket:
        raise NotImplementedError

    def make_waiter(self, websocket: Websocket) -> Waiter:
        from ..bus.hub import FdWaiter

        return FdWaiter(websocket.get_file_descriptor())

    # -- decisions, overridable as in ws4redis ------------------------------------------

    @property
    def Subscriber(self) -> type[RedisSubscriber]:  # noqa: N802 - the name ws4redis used
        return settings.get_callable("WS4REDIS_SUBSCRIBER")  # type: ignore[return-value]

    def assure_protocol_requirements(self, environ: dict[str, Any]) -> None:
        check_upgrade_request(environ)

    def process_request(self, request: WSGIRequest) -> None:
        """Attach session and user: from a websocket token if one is offered, else the session cookie.

        ``WS4REDIS_PROCESS_REQUEST`` replaces the cookie (a site's own scheme);
        a token of this package, when offered, is read all the same.

        :raises PermissionDenied: a token that is forged, expired, of a session
            that logged out or of a user who changed the password (HTTP 403).
        """
        token = offered_token(offered_protocols(request.META.get("HTTP_SEC_WEBSOCKET_PROTOCOL")))
        if token is None:
            custom = settings.get_callable("WS4REDIS_PROCESS_REQUEST")
            (custom or load_session_and_user)(request)
            # What load_session_and_user says, also when the site's hook called it; else the hook's own doing.
            get_metrics().identity(getattr(request, "ws4redis_source", "hook"))
            return
        try:
            claims = read_token(token)
            if claims.session_ref is not None and revocations.is_revoked(claims.session_ref):
                raise TokenError("token of a session that logged out")
        except TokenError as exc:
            raise PermissionDenied(str(exc)) from None
        request.session = None  # type: ignore[assignment] # a token brings a user, not a session: no session channel
        request.user = claims.user
        groups_read_with(request, claims.user, claims.groups)
        request.ws4redis_token = claims  # type: ignore[attr-defined]
        get_metrics().identity("token")

    def process_subscriptions(self, request: WSGIRequest) -> tuple[list[str], bool]:
        """The channel parameters agreed for this request, and whether to echo.

        :raises PermissionDenied: from ``WS4REDIS_ALLOWED_CHANNELS``.
        """
        wanted = parse_query(request.META.get("QUERY_STRING", ""))
        claims: Claims | None = getattr(request, "ws4redis_token", None)
        if claims is not None:
            facility = facility_of_request(request.path_info, settings.get("WEBSOCKET_URL"))
            refusal = claims.allows(facility, wanted.channels)
            if refusal is not None:
                raise PermissionDenied(refusal)
        allowed = settings.get_callable("WS4REDIS_ALLOWED_CHANNELS")
        if allowed is not None:
            wanted = restrict(wanted, allowed(request, list(wanted.channels)))
        return list(wanted.channels), wanted.echo

    # -- the WSGI application --------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            subscriber = self.open_subscription(environ)
        except PermissionDenied as exc:
            return self.refuse(start_response, "403 Forbidden", str(exc) or "channels not allowed", environ)
        except HandshakeError as exc:
            return self.refuse(start_response, exc.status, str(exc), environ, list(exc.headers))
        except Exception:
            logger.exception("websocket request on %s failed before the upgrade", loggable(environ.get("PATH_INFO")))
            return self.refuse(start_response, "500 Internal Server Error", "server error", environ)
        try:
            # Completing the handshake only once Redis confirmed the subscriptions
            # means a page may rely on every message published after ``onopen``.
            # Without Redis the handshake completes anyway, and the websocket
            # catches up from history once the hub subscribed.
            subscriber.wait_subscribed()
            websocket = self.upgrade_websocket(environ, start_response)
        except BaseException as exc:
            self.active_connections -= 1
            get_authority().forget(subscriber)
            subscriber.release()
            if isinstance(exc, HandshakeError):  # refused before anything was written
                return self.refuse(start_response, exc.status, str(exc), environ, list(exc.headers))
            get_metrics().handshake("error")
            raise
        metrics = get_metrics()
        metrics.handshake("accepted")
        metrics.handshake_seconds.observe(time.perf_counter() - started)
        metrics.opened(subscriber.facility)
        self.run_websocket(websocket, subscriber, environ.get("PATH_INFO", ""))
        return []

    def run_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, path: str) -> None:
        """Serve an upgraded websocket in this greenlet until it ends, then release it (connection slot, channels, socket).

        The greenlet waits until the socket is readable, the hub has something
        for the websocket, or :attr:`poll_interval` passed, and takes a turn
        (:class:`~ws4redis_uwsgi.server.session.Session`).
        """
        session = Session(self, websocket, subscriber, path)
        waiter = self.make_waiter(websocket)
        subscriber.attach(waiter.wake)
        self._waiters.add(waiter)
        try:
            if session.open(waiter):
                while session.live:
                    waiter.wait(self.poll_interval)
                    turn = session.turn()
                    if turn is Turn.END:
                        break
                    if turn is Turn.MORE:
                        waiter.wake()  # another turn, once the other websockets had theirs
                        gevent.sleep(0)
                session.close_if_stopping()
        finally:
            self._waiters.discard(waiter)
            waiter.close()
            session.end()

    def end_websocket(self, websocket: Websocket, subscriber: RedisSubscriber) -> None:
        """Give back the websocket's connection slot, channels and socket; once per websocket, whatever happened.

        Adapters' ``close`` never raises for a client that is gone, whatever the errno.
        """
        self.active_connections -= 1
        get_metrics().closed(subscriber.facility)
        try:
            get_authority().forget(subscriber)
            subscriber.release()
        finally:
            websocket.close(CloseCode.NORMAL_CLOSURE)

    def max_connections(self) -> int | None:
        """``WS4REDIS_MAX_CONNECTIONS``, else what the adapter can hold (None: no limit)."""
        return limits.max_connections()

    def open_subscription(self, environ: dict[str, Any]) -> RedisSubscriber:
        """Everything before the upgrade: validate, take a connection slot, authenticate, agree on channels."""
        facility_from_path(environ.get("PATH_INFO", ""), settings.get("WEBSOCKET_URL"))
        self.assure_protocol_requirements(environ)
        check_origin(
            environ.get("HTTP_ORIGIN"),
            settings.allowed_origins(),
            allow_missing=settings.get("WS4REDIS_ALLOW_MISSING_ORIGIN"),
        )
        limit = self.max_connections()
        if limit is not None and self.active_connections >= limit:
            raise ServerBusyError("too many connections, retry later")
        # The slot is taken now: handshakes waiting for the database or Redis count
        # too, or a burst would pass the check all at once.
        self.active_connections += 1
        try:
            request = WSGIRequest(environ)
            if not self.may_read_database(request):
                return self.subscribe_request(request)
            # Session, user, groups and the hooks may query the database: that runs on
            # the worker's few database greenlets, which keep their connections.
            return get_workers().run(self.subscribe_request, request)
        except BaseException:
            self.active_connections -= 1
            raise

    def may_read_database(self, request: WSGIRequest) -> bool:
        """Whether authenticating ``request`` and agreeing on its channels may query the database.

        Not on the stock set-up for a visitor without a session cookie or a
        websocket token (the session is empty and the user anonymous without a
        query), nor for a logged-in session served from memory (this worker's
        identity cache or the page's identity claim, attached here by
        :func:`~ws4redis_uwsgi.django.identity.load_without_reading`): those
        handshakes skip the hop to the database greenlets. A site hook, another
        subscriber class, or a subclass's own ``process_request`` or
        ``process_subscriptions`` may query it: those keep the hop.
        """
        if request.META.get("HTTP_SEC_WEBSOCKET_PROTOCOL") or self._customized():
            return True
        if django_settings.SESSION_COOKIE_NAME not in request.COOKIES:
            return False
        return not load_without_reading(request)

    def _customized(self) -> bool:
        """Whether a site's code takes part in authenticating a handshake or agreeing on its channels."""
        hooks = settings.get("WS4REDIS_PROCESS_REQUEST"), settings.get("WS4REDIS_ALLOWED_CHANNELS")
        return (
            any(hook is not None for hook in hooks)
            or self.Subscriber is not RedisSubscriber
            or type(self).process_request is not WebsocketWSGIServer.process_request
            or type(self).process_subscriptions is not WebsocketWSGIServer.process_subscriptions
        )

    def subscribe_request(self, request: WSGIRequest) -> RedisSubscriber:
        """Authenticate ``request``, agree on its channels and subscribe; may use the database."""
        self.process_request(request)
        channels, echo = self.process_subscriptions(request)
        subscriber = self.Subscriber(self._redis_connection)
        query = parse_query(request.META.get("QUERY_STRING", ""))
        subscriber.configure(echo=echo, resume=query.framing)
        subscriber.set_pubsub_channels(request, channels)
        if len(subscriber.channels) > limits.max_channels():
            subscriber.release()
            raise TooManyChannelsError("too many channels")
        get_authority().watch(subscriber)  # from now on, its session ending closes it
        membership = presence.membership(subscriber, events=query.presence)
        if membership is not None:  # (an attribute set only then: idle websockets stay small)
            subscriber.presence = membership
        return subscriber

    def refuse(
        self,
        start_response: StartResponse,
        status: str,
        reason: str,
        environ: dict[str, Any],
        headers: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        logger.info("websocket refused (%s, %s): %s", status, reason, loggable(environ.get("PATH_INFO")))
        get_metrics().handshake(status.partition(" ")[0])
        body = f"{status}: {reason}\n".encode()
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *(headers or [])])
        return [body]

    def start_websocket(self, websocket: Websocket, subscriber: RedisSubscriber, waiter: Any) -> None:
        """What a websocket gets first (stored messages, or ``!gap``); then the hub may write to it directly.

        A resuming websocket's backlog is owed instead and sent by the loop's
        first :meth:`step`, a page at a time, so the handshake does not wait
        for it. When Redis cannot be read now, the websocket opens anyway and
        catches up from history once it can. ``waiter`` is anything with a
        ``wake()`` that makes the loop take its next :meth:`step`.
        """
        if subscriber.presence is not None:
            subscriber.presence.join()
        outbox = subscriber.outbox
        opening = outbox.opening(subscriber.redis_now_ms())
        if opening is not Opening.STORED:  # it resumed from a token
            get_metrics().resumes += 1
        if opening is Opening.GAP:
            # Never given out by this Redis: resuming from it would silence every later message.
            logger.warning("websocket resumed from a position far ahead of Redis's clock: told of a gap")
            self.tell_gap(websocket, subscriber)
        if opening is not Opening.BACKLOG:
            try:
                if outbox.with_ids:
                    for message in subscriber.persisted_messages():
                        self.send_message(websocket, subscriber, message)
                else:
                    subscriber.send_persisted_messages(websocket)  # as ws4redis did; a subclass may override it
            except redis.RedisError as exc:
                logger.warning("stored messages not available for a new websocket (%s): it catches up from history", exc)
                outbox.owe_catch_up()
        self.enable_fast_path(websocket, subscriber, waiter)
        if outbox.catch_up_owed:
            waiter.wake()

    def step(self, websocket: Websocket, subscriber: RedisSubscriber, inbound: InboundPolicy) -> bool:
        """One turn of the loop: read what the client sent, catch up from history when owed, write what waits.

        :returns: True when the client sent more than one turn handles: take another turn soon.
        """
        if subscriber.session_ended:
            if not websocket.closed:
                logger.info("closing a websocket whose session ended")
                websocket.close(CloseCode.SESSION_ENDED, "session ended")
            return False
        more = self.receive_all(websocket, subscriber, inbound)
        # A catch-up waits until Redis confirmed the subscriptions: what is published
        # from then on arrives live, behind the backlog.
        if subscriber.outbox.catch_up_owed and not websocket.closed and subscriber.subscribed():
            self.catch_up(websocket, subscriber)
        self.send_all(websocket, subscriber)
        return more

    def catch_up(self, websocket: Websocket, subscriber: RedisSubscriber) -> None:
        """Send what was published after the websocket's position (see :class:`Outbox`); retried while Redis refuses."""
        outbox = subscriber.outbox
        complete = False
        try:
            self.send_backlog(websocket, subscriber, outbox.begin_catch_up())
            complete = True
        except redis.RedisError as exc:
            logger.warning("history not available for a websocket (%s); trying again in %g s", exc, BACKLOG_RETRY)
            gevent.spawn_later(BACKLOG_RETRY, subscriber.notify)
        finally:
            outbox.end_catch_up(complete)

    def enable_fast_path(self, websocket: Websocket, subscriber: RedisSubscriber, waiter: Any) -> None:
        """Let the hub write frames straight to adapters that can take them (``direct_writer``).

        A direct write the socket took only in part wakes the loop (``waiter``), which writes the rest.
        """
        # The subscriber's notify is waiter.wake (attached when the websocket started): the same
        # bound method, not a second one to keep (and for the collector to walk) per websocket.
        wake = subscriber.notify if subscriber.notify == waiter.wake else waiter.wake
        socket = websocket.direct_writer(wake)
        if socket is not None:
            subscriber.enable_fast_path(socket)

    def shutdown(self) -> None:
        """Close every websocket of this process with 1012 (service restart); clients resume elsewhere.

        Each close asks its client to wait a random part of :attr:`restart_spread` before
        it reconnects, so that they do not all come back at once (:func:`restart_spread`).
        """
        if not self.stopping:
            self.restart_spread = restart_spread(self.active_connections, settings.get("WS4REDIS_RESTART_RECONNECT_RATE"))
        self.stopping = True
        for waiter in tuple(self._waiters):
            waiter.wake()

    def close_all(self, timeout: float = 3.0) -> None:
        """:meth:`shutdown`, then give the websockets ``timeout`` seconds to finish closing."""
        if not self.active_connections:
            return
        self.shutdown()
        deadline = time.monotonic() + timeout
        while self.active_connections and time.monotonic() < deadline:
            gevent.sleep(0.02)

    def tell_gap(self, websocket: Websocket, subscriber: RedisSubscriber) -> None:
        """``!gap``, then what ``WS4REDIS_ON_GAP`` gives for this client (fresh state, so the page need not reload).

        The hook runs on the worker's database greenlets (it may query);
        when it fails, the client has ``!gap`` alone and the failure is logged.
        """
        websocket.send(GAP_NOTICE, binary=False)
        get_metrics().gaps += 1
        hook = settings.get_callable("WS4REDIS_ON_GAP")
        if hook is None:
            return
        try:
            messages = get_workers().run(lambda: list(hook(subscriber.facility, subscriber.channels, subscriber.username) or ()))
        except Exception:
            logger.exception("WS4REDIS_ON_GAP failed for a websocket on %s", loggable(subscriber.facility))
            return
        for message in messages:
            payload, binary = outgoing(message)
            self.send_message(websocket, subscriber, BusMessage(payload, binary))

    def send_message(self, websocket: Websocket, subscriber: RedisSubscriber, message: BusMessage) -> None:
        """One message to the client, framed as its outbox says (behind its id for a resuming client)."""
        websocket.send(subscriber.outbox.payload(message), binary=message.binary)

    def send_backlog(self, websocket: Websocket, subscriber: RedisSubscriber, since: Mapping[str, Order]) -> None:
        """What the client missed after its positions ``since`` (preceded by ``!gap`` when history lost some of it).

        Live messages wait meanwhile (the outbox's catch-up gate). The
        backlog is read and sent a page at a time, within the worker's
        backlog budget: a client that does not take its backlog holds one
        page, and is cut off after the send timeout.

        :raises redis.RedisError: when Redis cannot be read; what was sent stays sent.
        """
        try:
            self._send_backlog(websocket, subscriber, since)
        except BacklogBudgetError as exc:
            logger.warning("closing a websocket that waited too long for its backlog (%s)", exc)
            websocket.close(CloseCode.TRY_AGAIN_LATER, "try again later")
        except SlowConsumerError:  # counted where the websocket ends (Session._fail)
            logger.warning("closing a websocket that did not take its backlog in time")
            raise

    def _send_backlog(self, websocket: Websocket, subscriber: RedisSubscriber, since: Mapping[str, Order]) -> None:
        reader = subscriber.read_backlog(since)
        budget = backlog_budget()
        first = True
        while not websocket.closed:
            budget.reserve(history.PAGE_BYTES, limits.BACKLOG_WAIT)
            held = history.PAGE_BYTES
            try:
                page = reader.next_page()
                held = budget.resize(held, page.nbytes if page is not None else 0)
                if first and subscriber.outbox.take_gap(reader.gap):  # known once the first page was read
                    logger.info("websocket resumed from a position older than the history: told of a gap")
                    self.tell_gap(websocket, subscriber)
                first = False
                if page is None:
                    return
                for message in subscriber.fresh(page.messages):
                    self.send_message(websocket, subscriber, message)
            finally:
                budget.release(held)

    def receive_all(self, websocket: Websocket, subscriber: RedisSubscriber, inbound: InboundPolicy) -> bool:
        """Act on what the client sent, :data:`~ws4redis_uwsgi.server.limits.MESSAGES_PER_TURN` messages at most.

        :returns: True when it stopped at that bound: more may wait.
        """
        for _ in range(MESSAGES_PER_TURN):
            if websocket.closed:
                return False
            message = websocket.receive()
            if message is None:
                # Adapters that bound their work per call say whether they left frames unread.
                return bool(getattr(websocket, "pending", False)) and not websocket.closed
            verdict = inbound.judge(message, time.monotonic())
            if verdict is Verdict.HEARTBEAT:
                get_metrics().heartbeats += 1
                websocket.send(message, binary=False)
            elif verdict is Verdict.PUBLISH:
                get_metrics().client_messages += 1
                try:
                    subscriber.publish_message(RedisMessage(message))
                except redis.RedisError as exc:
                    logger.warning("message from websocket not published: %s", exc)
            else:
                close_for_rule(websocket, *verdict.value)
        return True

    def send_all(self, websocket: Websocket, subscriber: RedisSubscriber) -> None:
        """Write what waits; once the client fell too far behind, close it instead (what waits is not worth sending)."""
        outbox = subscriber.outbox
        while not websocket.closed and (message := outbox.next()) is not None:
            self.send_message(websocket, subscriber, message)
        if outbox.overflowed and not websocket.closed:
            get_metrics().slow_consumer_closes += 1
            logger.warning("closing a websocket that fell %d messages behind", outbox.max_pending)
            websocket.close(CloseCode.SLOW_CONSUMER, "too slow")
