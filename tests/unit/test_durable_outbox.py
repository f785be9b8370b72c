"""The durable outbox's settings, their checks, and the worker drain's rounds (no Redis, no database)."""

from __future__ import annotations

import logging

import pytest
import redis
from django.db import OperationalError
from django.test import override_settings

from ws4redis_uwsgi import settings
from ws4redis_uwsgi.bus import durable
from ws4redis_uwsgi.checks import check_durable_outbox
from ws4redis_uwsgi.server import outbox_drain


def test_the_outbox_is_off_by_default_and_its_defaults_pass_the_checks():
    assert settings.DEFAULTS["WS4REDIS_DURABLE_OUTBOX"] is False
    assert durable.databases() == ["default"]
    assert durable.drain_interval() == 0  # off: no drain in the websocket workers
    assert durable.grace() == 10
    assert check_durable_outbox() == []


@pytest.mark.parametrize(
    ("overrides", "interval"),
    [
        ({"WS4REDIS_DURABLE_OUTBOX": True}, durable.DEFAULT_DRAIN_INTERVAL),
        ({"WS4REDIS_DURABLE_OUTBOX": True, "WS4REDIS_OUTBOX_DRAIN_INTERVAL": 0}, 0),
        ({"WS4REDIS_DURABLE_OUTBOX": True, "WS4REDIS_OUTBOX_DRAIN_INTERVAL": 0.5}, 0.5),
        # Per-call durable=True with the setting off: the drain runs once an interval is given.
        ({"WS4REDIS_OUTBOX_DRAIN_INTERVAL": 2}, 2),
    ],
)
def test_the_drain_interval_follows_the_outbox_setting_unless_given(overrides, interval):
    with override_settings(**overrides):
        assert durable.drain_interval() == interval
        assert check_durable_outbox() == []


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("WS4REDIS_DURABLE_OUTBOX", "yes", "ws4redis_uwsgi.E030"),
        ("WS4REDIS_DURABLE_OUTBOX", 1, "ws4redis_uwsgi.E030"),
        ("WS4REDIS_OUTBOX_DATABASES", "default", "ws4redis_uwsgi.E031"),
        ("WS4REDIS_OUTBOX_DATABASES", [], "ws4redis_uwsgi.E031"),
        ("WS4REDIS_OUTBOX_DATABASES", ["default", "nowhere"], "ws4redis_uwsgi.E031"),
        ("WS4REDIS_OUTBOX_DATABASES", None, "ws4redis_uwsgi.E031"),
        ("WS4REDIS_OUTBOX_DRAIN_INTERVAL", -1, "ws4redis_uwsgi.E032"),
        ("WS4REDIS_OUTBOX_DRAIN_INTERVAL", "5", "ws4redis_uwsgi.E032"),
        ("WS4REDIS_OUTBOX_DRAIN_INTERVAL", True, "ws4redis_uwsgi.E032"),
        ("WS4REDIS_OUTBOX_GRACE", 0, "ws4redis_uwsgi.E033"),
        ("WS4REDIS_OUTBOX_GRACE", -2, "ws4redis_uwsgi.E033"),
        ("WS4REDIS_OUTBOX_GRACE", None, "ws4redis_uwsgi.E033"),
        ("WS4REDIS_OUTBOX_GRACE", float("nan"), "ws4redis_uwsgi.E033"),
    ],
)
def test_each_bad_value_gives_one_error_with_its_id_and_a_hint(setting, value, check_id):
    with override_settings(**{setting: value}):
        errors = check_durable_outbox()
    assert [e.id for e in errors] == [check_id]
    assert errors[0].msg.startswith(setting + " ")
    assert errors[0].hint


@pytest.mark.parametrize("value", [["default"], ("default", "other")])
def test_good_databases_pass(value):
    with override_settings(WS4REDIS_OUTBOX_DATABASES=value):
        assert check_durable_outbox() == []


def test_the_check_is_registered_with_django():
    from django.core import checks

    with override_settings(WS4REDIS_OUTBOX_GRACE=0):
        assert "ws4redis_uwsgi.E033" in [e.id for e in checks.run_checks()]


def test_a_durable_publish_on_a_database_no_drain_empties_is_refused():
    durable.check_database("default")
    with pytest.raises(ValueError, match="WS4REDIS_OUTBOX_DATABASES"):
        durable.check_database("other")


def test_a_round_that_fails_on_one_database_logs_it_and_goes_on_with_the_next(monkeypatch, caplog):
    outcomes = [
        redis.ConnectionError("refused"),
        OperationalError("no such table: ws4redis_outbox"),
        RuntimeError("unexpected"),
        2,
    ]

    def drain(alias):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(durable, "drain", drain)
    aliases = ["other", "other", "other", "default"]
    with override_settings(WS4REDIS_OUTBOX_DATABASES=aliases), caplog.at_level(logging.INFO, "ws4redis_uwsgi"):
        assert outbox_drain.OutboxDrain(1.0).round() == 2
    assert [r.getMessage() for r in caplog.records] == [
        "outbox of database 'other' not drained: Redis cannot be reached (refused)",
        "outbox of database 'other' not drained: no such table: ws4redis_outbox",
        "outbox of database 'other' not drained",
        "published 2 message(s) a publisher left in the outbox of database 'default'",
    ]
