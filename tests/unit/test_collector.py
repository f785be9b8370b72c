"""The websocket workers' garbage collector thresholds (ws4redis_uwsgi.server.collector)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ws4redis_uwsgi.server.collector import tune_collector


@pytest.fixture
def thresholds() -> Iterator[None]:
    """Whatever a test sets, the process gets its own thresholds back."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_full_collection_threshold_is_set_and_the_young_generations_keep_theirs(thresholds):
    gc.set_threshold(5000, 20, 10)  # a site that tuned the young generations
    tune_collector(100)
    assert gc.get_threshold() == (5000, 20, 100)


def test_none_leaves_every_threshold_alone(thresholds):
    gc.set_threshold(700, 10, 10)
    tune_collector(None)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_default_runs_full_collections_ten_times_more_rarely_than_python(thresholds):
    from ws4redis_uwsgi import settings

    gc.set_threshold(700, 10, 10)  # Python's own
    tune_collector(settings.get("WS4REDIS_GC_FULL_THRESHOLD"))
    assert gc.get_threshold() == (700, 10, 100)
