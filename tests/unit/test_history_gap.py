"""When history can no longer vouch for what came after a client's position (bus.history.is_gap): values in, verdict out."""

import pytest

from ws4redis_uwsgi.bus.history import is_gap

NOW = 1_700_000_000_000
HOUR = 3_600_000


@pytest.mark.parametrize(
    ("since", "newest_trimmed", "oldest", "max_age", "gap"),
    [
        # Trimmed past the position (by length or age): a gap; trimmed before it: none.
        ((NOW - 10, 0), (NOW - 5, 0), (NOW - 4, 0), HOUR, True),
        ((NOW - 10, 0), (NOW - 10, 0), (NOW - 9, 0), HOUR, False),
        ((NOW - 10, 3), (NOW - 10, 2), (NOW - 10, 4), 0, False),
        # Nothing trimmed, position within the age: none, stream or not.
        ((NOW - 10, 0), None, (NOW - 5, 0), HOUR, False),
        ((NOW - 10, 0), None, None, HOUR, False),
        # Position beyond the age horizon: a gap unless the stream still reaches back to it.
        ((NOW - 2 * HOUR, 0), None, None, HOUR, True),
        ((NOW - 2 * HOUR, 0), None, (NOW - 5, 0), HOUR, True),
        ((NOW - 2 * HOUR, 0), None, (NOW - 2 * HOUR, 0), HOUR, False),
        ((NOW - 2 * HOUR, 5), None, (NOW - 3 * HOUR, 0), HOUR, False),
        # Without an age limit a stream never expires: only trimming makes a gap.
        ((NOW - 100 * HOUR, 0), None, (NOW - 5, 0), 0, False),
        ((NOW - 100 * HOUR, 0), None, None, 0, False),
    ],
)
def test_is_gap(since, newest_trimmed, oldest, max_age, gap):
    assert is_gap(since, newest_trimmed, oldest, NOW, max_age) is gap


def test_a_stream_made_anew_is_a_gap_for_an_older_id_and_not_for_an_arrival():
    created = (5_000, 7)
    assert is_gap((4_000, 3), None, (5_000, 7), 6_000, 0, created)  # an id of the stream that is gone
    assert not is_gap((4_000, 0), None, (5_000, 7), 6_000, 0, created)  # the moment a client arrived
    assert not is_gap((5_000, 7), None, (5_000, 7), 6_000, 0, created)  # the new stream's own first id
