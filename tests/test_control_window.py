"""The one time-window type and the one percentile of the serving side."""

import math
import random

import pytest

from snnet.control.window import TimeWindow, percentile


def test_percentile_is_the_nearest_rank():
    xs = [float(v) for v in range(1, 101)]
    random.Random(0).shuffle(xs)
    assert percentile(xs, 99) == 99.0 and percentile(xs, 50) == 50.0 and percentile(xs, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 10.0], 90) == 10.0  # always one of the values
    assert all(percentile(range(1, n + 1), 99) == math.ceil(0.99 * n) for n in range(1, 300))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_a_time_window_forgets_what_is_older_than_its_span():
    w = TimeWindow[float](10.0)
    w.add(0.0, 1.0)
    w.add(5.0, 2.0, count=3)
    w.add(9.0, 3.0)
    assert len(w) == 5 and w.count_since(5.0) == 4 and w.count_since(9.5) == 0
    w.forget(now=12.0)  # drops what is older than 2.0
    assert list(w.items()) == [(5.0, 2.0)] * 3 + [(9.0, 3.0)]
    w.drop_before(6.0)
    assert list(w.values()) == [3.0]
    w.forget(now=100.0)
    assert len(w) == 0 and list(w.items()) == []
