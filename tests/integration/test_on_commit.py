"""publish_message(on_commit=True): after the commit, never after a rollback, at once outside a transaction.

Each runs with the site on SQLite and on PostgreSQL (``site_server``), whose transactions and savepoints are real ones.
"""

from __future__ import annotations

import logging

import pytest
import redis
from django.db import transaction
from django.test import override_settings

from tests.integration.helpers import client, facility, recv
from ws4redis_uwsgi.publisher import RedisPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def publisher(fac: str) -> RedisPublisher:
    return RedisPublisher(facility=fac, broadcast=True)


def test_inside_a_transaction_the_message_goes_out_after_the_commit(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with transaction.atomic():
            assert publisher(fac).publish_message("after the commit", expire=0, on_commit=True) is None
            with transaction.atomic():  # a savepoint: still waits for the outermost block
                publisher(fac).publish_message("after the commit too", expire=0, on_commit=True)
            # Published at once, it overtakes the others: they did not go out yet.
            assert publisher(fac).publish_message("during", expire=0) == 1
            assert recv(ws) == "during"
        assert [recv(ws) for _ in range(2)] == ["after the commit", "after the commit too"]


def test_after_a_rollback_the_message_never_goes_out(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with pytest.raises(RuntimeError), transaction.atomic():
            publisher(fac).publish_message("rolled back", expire=0, on_commit=True)
            raise RuntimeError("the view failed")
        with transaction.atomic():
            with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint, rolled back
                publisher(fac).publish_message("in a savepoint rolled back", expire=0, on_commit=True)
                raise RuntimeError("this part failed")
            publisher(fac).publish_message("kept", expire=0, on_commit=True)
        assert recv(ws) == "kept"
        assert publisher(fac).publish_message("next", expire=0) == 1
        assert recv(ws) == "next"  # nothing of the rolled back came in between


def test_outside_a_transaction_it_goes_out_at_once(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        assert publisher(fac).publish_message("at once", expire=0, on_commit=True) == 1
        assert recv(ws) == "at once"


def test_the_setting_makes_on_commit_the_default_and_false_overrides_it(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws, override_settings(WS4REDIS_PUBLISH_ON_COMMIT=True):
        with transaction.atomic():
            assert publisher(fac).publish_message("deferred", expire=0) is None
            assert publisher(fac).publish_message("not deferred", expire=0, on_commit=False) == 1
            assert recv(ws) == "not deferred"
        assert recv(ws) == "deferred"


def test_using_picks_the_database_whose_commit_it_waits_for(site_server):
    fac = facility()
    with client(site_server, f"/ws/{fac}?subscribe-broadcast") as ws:
        with transaction.atomic(using="other"):
            assert publisher(fac).publish_message("after other", expire=0, on_commit=True, using="other") is None
            # The default database is in no transaction: that one goes at once.
            assert publisher(fac).publish_message("default: at once", expire=0, on_commit=True) == 1
            assert recv(ws) == "default: at once"
        assert recv(ws) == "after other"


def test_a_bad_message_raises_in_the_view_and_a_failure_after_the_commit_is_logged(site_server, caplog):
    fac = facility()
    with pytest.raises(TypeError), transaction.atomic():
        publisher(fac).publish_message(42, on_commit=True)  # type: ignore[arg-type]
    with override_settings(WS4REDIS_CONNECTION="redis://127.0.0.1:1/0"), caplog.at_level(logging.ERROR):
        with transaction.atomic():
            late = publisher(fac)
            late.publish_message("Redis is away", expire=0, on_commit=True)
        # The commit went through; the failure is in the log, not an exception in the view.
    assert any("not published after the commit" in r.getMessage() for r in caplog.records)
    with override_settings(WS4REDIS_CONNECTION="redis://127.0.0.1:1/0"), pytest.raises(redis.ConnectionError):
        publisher(fac).publish_message("outside: raises as always", on_commit=True)
