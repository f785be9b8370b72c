"""Session, user and group lookups for websocket handshakes, compiled once instead of per query.

A logged-in handshake asks the database three questions: the session row of
the cookie, the user row the session names, and (for group channels) the
user's group names, the last two in one query where they can be (below).
Through the ORM nearly all the CPU each one costs goes
into building and compiling a query that is the same every time, many times
what the database takes to answer it. A burst of reconnecting browsers after a
deploy is thousands of these at once, so here Django compiles each query
once per database alias, with a marker value where the key goes, and later
handshakes run the compiled SQL on the cursor with their own key. Rows go
through the same field converters and ``Model.from_db`` the ORM uses, so the
objects are the ones the ORM would have built. The SQL runs on the backend's
own cursor, not through Django's cursor wrapper, unless something watches
queries (``DEBUG``, an execute wrapper): an APM that patches the wrapper
class does not see these lookups.

Only the stock set-up takes this path: Django's ``db`` session engine and
``ModelBackend``, a user model with an integer primary key and a default
manager that adds no joins. Anything else, and any session that does not
verify with the current SECRET_KEY (Django may then rotate or flush it),
goes through Django's own ``auth.get_user``, so a request always ends with
the session and user Django would have given it.

The user's group names come in the user's own query, joined (one row per
group), when the user model has Django's ``groups`` and no database router
could send the groups elsewhere: a query less per first visit, whether or
not the websocket asks for group channels (a row per group costs less than a
query of its own).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from django.conf import settings as django_settings
from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends import db as db_sessions
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.signals import setting_changed
from django.db import connections, router
from django.db.models import Model, QuerySet
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from .. import process

logger = logging.getLogger(__name__)

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
#: Stands for the key while a query is compiled: a string no session key can be,
#: an integer inside every backend's AutoField range that Django passes through as is.
TEXT_MARKER = "\x00ws4redis-marker\x00"
INT_MARKER = 2_147_483_000

Q = TypeVar("Q")


class UnsupportedQueryError(Exception):
    """This query cannot be reused safely; the ORM answers instead."""


class CompiledQuery:
    """One ORM query, compiled once, run again with another value in place of the marker."""

    def __init__(self, queryset: QuerySet, marker: object, instances: bool = False) -> None:
        self.alias = queryset.db
        compiler = queryset.query.get_compiler(self.alias)
        sql, params = compiler.as_sql()
        at = [i for i, p in enumerate(params) if p == marker and type(p) is type(marker)]
        if len(at) != 1:
            raise UnsupportedQueryError(f"the key appears {len(at)} times among the query's parameters")
        if instances and (
            not compiler.klass_info or compiler.klass_info.get("related_klass_infos") or compiler.annotation_col_map
        ):
            raise UnsupportedQueryError("the default manager joins related models or adds annotations")
        self.sql, self.params, self.index = sql, list(params), at[0]
        #: The cursor class seen, and the driver's own execute with ``sql`` as it takes it, if any (:func:`_driver_sql`).
        self.driver_sql: tuple[type, tuple[Callable[..., Any], str] | None] | None = None
        self.compiler = compiler
        columns = [select[0] for select in compiler.select[: compiler.col_count]]
        self.converters = compiler.get_converters(columns)
        self.model_fields: tuple[int, int, list[str]] | None = None
        if instances:
            fields = compiler.klass_info["select_fields"]
            start, end = fields[0], fields[-1] + 1
            self.model_fields = (start, end, [s[0].target.attname for s in compiler.select[start:end]])

    def rows(self, value: object) -> list[Sequence[Any]]:
        """The rows for ``value``, every column converted as the ORM converts it."""
        return self.converted(self.raw_rows(value))

    def converted(self, rows: list[Sequence[Any]], columns: Collection[int] | None = None) -> list[Sequence[Any]]:
        """``rows`` with their values converted by the fields (all columns, or those in ``columns``)."""
        converters = self.converters
        if columns is not None:
            converters = {index: converter for index, converter in converters.items() if index in columns}
        if not converters:
            return rows
        return list(self.compiler.apply_converters(rows, converters))

    def raw_rows(self, value: object) -> list[Sequence[Any]]:
        """The rows for ``value`` as the database driver gives them."""
        params = list(self.params)
        params[self.index] = value
        connection = connections[self.alias]
        if connection.execute_wrappers or connection.queries_logged:
            # Someone watches queries (DEBUG, a debug toolbar, an execute_wrapper): they see these too.
            with connection.cursor() as cursor:
                cursor.execute(self.sql, params)
                return cursor.fetchall()  # type: ignore[no-any-return]
        return self._fetch_all(connection, params)

    def instance(self, value: object) -> Model | None:
        """The one model instance the query finds for ``value``, or None."""
        assert self.model_fields is not None
        rows = self.rows(value)
        if len(rows) != 1:
            return None
        start, end, attnames = self.model_fields
        model: type[Model] = self.compiler.query.model
        return model.from_db(self.alias, attnames, rows[0][start:end])

    def _fetch_all(self, connection: Any, params: list[Any]) -> list[Sequence[Any]]:
        """The rows for ``params`` on the backend's own cursor, as ``connection.cursor()`` would give them.

        Without the layers of Django's cursor wrapper around it (health check,
        thread-sharing check, the wrapper object, the execute-wrapper chain):
        they cost more than the query itself, twice per first visit. Errors
        still come out as Django's database exceptions.
        """
        connection.ensure_connection()
        with connection.wrap_database_errors:
            cursor = connection.create_cursor()
            try:
                if self.driver_sql is None or self.driver_sql[0] is not type(cursor):
                    self.driver_sql = (type(cursor), _driver_sql(cursor, self.sql))
                direct = self.driver_sql[1]
                if direct is None:
                    cursor.execute(self.sql, params)
                else:
                    direct[0](cursor, direct[1], params)
                return cursor.fetchall()  # type: ignore[no-any-return]
            finally:
                cursor.close()


def _driver_sql(cursor: Any, sql: str) -> tuple[Callable[..., Any], str] | None:
    """sqlite3's own ``Cursor.execute`` and ``sql`` as it takes it, when ``cursor`` is Django's SQLite cursor; else None.

    That cursor turns Django's ``%s`` placeholders into sqlite3's ``?`` with a
    regular expression on every execute, 12-24 µs for the user query here:
    this converts once, the same way, and the query then goes to sqlite3's
    ``execute`` directly. A cursor class that changes ``execute`` (a
    subclass in a custom backend, an instrumented one) keeps its own.
    """
    if not any(cls.__module__ == "django.db.backends.sqlite3.base" for cls in type(cursor).__mro__):
        return None  # not SQLite's (and sqlite3 may not even be importable here)
    import sqlite3

    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    if type(cursor).execute is not SQLiteCursorWrapper.execute:
        return None  # (SQLiteCursorWrapper's own execute: a subclass of sqlite3.Cursor)
    return sqlite3.Cursor.execute, cursor.convert_query(sql)


# Compiled once per process, database alias and user model (see _compiled). The aliases
# come from the routers, which may depend on nothing but the model here (no instance hints).


def _session_query(alias: str) -> CompiledQuery:
    model = db_sessions.SessionStore.get_model_class()
    queryset = model.objects.using(alias).filter(session_key=TEXT_MARKER).values_list("session_data", "expire_date")
    return CompiledQuery(queryset, TEXT_MARKER)


def _user_query(alias: str) -> CompiledQuery:
    model = user_model()
    if model._meta.pk.get_internal_type() not in ("AutoField", "BigAutoField", "IntegerField", "BigIntegerField"):
        raise UnsupportedQueryError("the user model's primary key is not an integer")
    return CompiledQuery(model._default_manager.using(alias).filter(pk=INT_MARKER), INT_MARKER, instances=True)


class UserWithGroups:
    """The user query of :func:`_user_query` with the user's group names joined in: one row per group."""

    def __init__(self, alias: str) -> None:
        model = user_model()
        if _groups_field(model) is None:
            raise UnsupportedQueryError("the user model has no groups")
        if django_settings.DATABASE_ROUTERS:
            raise UnsupportedQueryError("a database router may read the groups elsewhere")
        plain = _compiled(_user_query, alias)
        if plain is None or plain.model_fields is None:
            raise UnsupportedQueryError("the user is read through the ORM")
        self.alias, self.model = alias, model
        self.attnames = plain.model_fields[2]
        queryset = model._default_manager.using(alias).filter(pk=INT_MARKER)
        self.query = CompiledQuery(queryset.values_list(*self.attnames, "groups__name"), INT_MARKER)

    def read(self, pk: int) -> tuple[Model | None, tuple[str, ...]]:
        """The user ``pk`` (or None) and the sorted names of its groups."""
        rows = self.query.raw_rows(pk)
        if not rows:
            return None, ()
        width = len(self.attnames)
        # The user's columns repeat in every row: converted once (dates are parsed on SQLite), the names in each.
        first = self.query.converted(rows[:1])[0]
        names = [row[width] for row in self.query.converted(rows[1:], columns=(width,))]
        user = self.model.from_db(self.alias, self.attnames, first[:width])
        return user, tuple(sorted(name for name in [first[width], *names] if name is not None))


def _groups_query(alias: str) -> CompiledQuery:
    user = user_model()(pk=INT_MARKER)
    return CompiledQuery(user.groups.using(alias).values_list("name", flat=True), INT_MARKER)  # type: ignore[attr-defined]


_QUERIES = "compiled auth queries"


def _forget(**kwargs: Any) -> None:
    process.forget(_QUERIES)  # a test changed DATABASES, AUTH_USER_MODEL or another setting: compile again
    user_model.cache_clear()


@functools.cache
def user_model() -> type[Model]:
    """``auth.get_user_model()``, asked for several times per handshake: an app registry lookup each time."""
    return auth.get_user_model()


setting_changed.connect(_forget, dispatch_uid="ws4redis_uwsgi.django.auth_lookup")


def _compiled(factory: Callable[[str], Q], alias: str, otherwise: str = "lookups go through the ORM") -> Q | None:
    """``factory(alias)``, made once; None from then on if it cannot be, logged once with what happens ``otherwise``."""
    queries: dict[tuple[Any, str, Any], Any] = process.resource(_QUERIES, dict)
    key = (factory, alias, user_model())
    try:
        return queries[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    query = None
    try:
        query = factory(alias)
    except UnsupportedQueryError as exc:
        logger.info("ws4redis_uwsgi: %s %s: %s", factory.__name__, otherwise, exc)
    except Exception:
        logger.exception("ws4redis_uwsgi: could not compile %s; %s", factory.__name__, otherwise)
    queries[key] = query
    return query


def load_session(store: Any) -> bool:
    """Fill a ``db`` SessionStore from its row, as ``store.load()`` would; False if it cannot here."""
    if type(store) is not db_sessions.SessionStore:
        return False
    query = _compiled(_session_query, store.model.objects.db)
    if query is None:
        return False
    key = store.session_key
    rows = query.rows(key) if key is not None else []
    # SessionBase keeps the loaded data in _session_cache (it has since Django 1.4).
    if rows and rows[0][1] > timezone.now():
        store._session_cache = store.decode(rows[0][0])  # type: ignore[attr-defined]
    else:
        # What SessionStore.load() leaves behind for a missing or expired row.
        store._session_key = None
        store._session_cache = {}  # type: ignore[attr-defined]
    return True


#: What :func:`backend_user_and_groups` returns where the compiled query cannot answer: ask the backend itself.
UNANSWERED: Any = object()


def backend_user_and_groups(user_pk: Any, backend_path: str, with_groups: bool = True) -> tuple[Any, tuple[str, ...] | None]:
    """What ``auth.load_backend(backend_path).get_user(user_pk)`` returns, by the compiled user query where it may.

    That is Django's ``ModelBackend`` itself (not a subclass: its path is
    another) and an integer key: the user, or None when there is none or it
    is inactive. :data:`UNANSWERED` for anything else. With ``with_groups``,
    also the user's group names where they came in its query (else None).
    """
    if backend_path != MODEL_BACKEND or not isinstance(user_pk, int):
        return UNANSWERED, None
    alias = user_model()._default_manager.db
    joined = _compiled(UserWithGroups, alias, "not used, the groups have a query of their own") if with_groups else None
    groups: tuple[str, ...] | None = None
    if joined is not None:
        user, groups = joined.read(user_pk)
    else:
        query = _compiled(_user_query, alias)
        if query is None:
            return UNANSWERED, None
        user = query.instance(user_pk)
    # ModelBackend.get_user: None for a missing user, and for one user_can_authenticate refuses.
    if user is None or not getattr(user, "is_active", True):
        return None, None
    return user, groups


def user_by_key(pk: Any, with_groups: bool = False) -> tuple[Any, tuple[str, ...] | None]:
    """The user whose primary key is ``pk`` (a string will do), as ``ModelBackend.get_user`` reads it.

    None for no such user or an inactive one; :data:`UNANSWERED` where the
    compiled queries cannot answer (the caller asks the ORM). With
    ``with_groups``, the user's group names where they came in its query (else None).
    """
    try:
        user_pk = user_model()._meta.pk.to_python(pk)
    except ValidationError:
        return UNANSWERED, None  # the ORM says what it says for such a key
    return backend_user_and_groups(user_pk, MODEL_BACKEND, with_groups)


def read_user(request: Any) -> tuple[Any, tuple[str, ...] | None]:
    """``django.contrib.auth.get_user(request)``, with the user read by a compiled query where it may be.

    And the sorted names of the user's groups where they came in the same query (else None).
    """
    # Imported here: importing models before django.setup() fails, and this module is imported early.
    from django.contrib.auth.models import AnonymousUser

    session = request.session
    try:
        # The session first: an anonymous visitor's (most handshakes) ends here, before any model lookup.
        stored_pk, backend_path = session[SESSION_KEY], session[BACKEND_SESSION_KEY]
    except KeyError:
        return AnonymousUser(), None
    try:
        user_pk = user_model()._meta.pk.to_python(stored_pk)
    except Exception:
        return auth.get_user(request), None  # an odd value in the session: Django decides
    if backend_path not in django_settings.AUTHENTICATION_BACKENDS:
        return auth.get_user(request), None
    user, groups = backend_user_and_groups(user_pk, backend_path)
    if user is UNANSWERED:
        return auth.get_user(request), None
    if user is None:
        return AnonymousUser(), None  # ModelBackend.get_user returns None for both: no session check follows
    session_hash = session.get(HASH_SESSION_KEY)
    if not session_hash or not constant_time_compare(session_hash, user.get_session_auth_hash()):  # type: ignore[attr-defined]
        # Django tries SECRET_KEY_FALLBACKS, then rotates or flushes the session: let it.
        return auth.get_user(request), None
    return user, groups


def group_names(user: Any) -> tuple[str, ...]:
    """The sorted names of ``user``'s groups (``user.groups``), by a compiled query where it may be."""
    query = None
    if type(user) is user_model() and isinstance(user.pk, int):
        groups = _groups_field(type(user))
        if groups is None:
            return ()
        # What user.groups.db answers, without building the related manager (twice per handshake, before).
        query = _compiled(_groups_query, router.db_for_read(groups.related_model, instance=user))
    elif not hasattr(user, "groups"):
        return ()
    if query is None:
        return tuple(sorted(user.groups.values_list("name", flat=True)))
    return tuple(sorted(row[0] for row in query.rows(user.pk)))


@functools.cache
def _groups_field(user_model: type[Model]) -> Any:
    """The many-to-many field ``groups`` of ``user_model`` (PermissionsMixin's), or None."""
    try:
        field = user_model._meta.get_field("groups")
    except FieldDoesNotExist:
        return None
    return field if field.many_to_many else None
