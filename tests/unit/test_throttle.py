"""One log line per interval for an event that repeats (ws4redis_uwsgi.core.throttle): times in, counts out."""

from ws4redis_uwsgi.core.throttle import Throttle


def test_the_first_event_is_reported_then_one_per_interval_with_the_count_since():
    throttle = Throttle(10.0)
    assert throttle.due(100.0) == 1
    assert [throttle.due(t) for t in (101.0, 105.0, 109.9)] == [None, None, None]
    assert throttle.due(110.0) == 4  # the three held back and this one
    assert throttle.due(110.5) is None
    assert throttle.due(200.0) == 2
