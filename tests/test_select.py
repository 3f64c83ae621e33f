"""Choosing a stitch: the most accurate within a budget, the cheapest above a floor, the Pareto
front over any cost; and the errors that name what to measure."""

import pytest

from snnet import Stitch
from snnet.measure.results import Record, Results
from snnet.measure.select import select


def _results(rows, *, network=None) -> Results:
    return Results(
        [
            Record(Stitch.parse(s), g, p, top1=t, latency_ms=lat, latency_p90_ms=lat)
            for s, g, p, t, lat in rows
        ],
        network=network,
    )


HAND = [  # stitch, gmacs, params, top1, latency_ms
    ("0", 1.25, 5, 70.0, 2.0),
    ("1", 4.6, 22, 79.0, 6.0),
    ("2", 17.5, 86, 81.0, 20.0),
    ("0:3-1:4", 2.5, 14, 74.0, 3.5),
    ("0:5-1:6", 3.0, 12, 76.0, 4.0),
    ("0:6-1:6", 3.0, 12, 76.0, 4.5),  # ties 0:5-1:6 on GMACs and accuracy, slower
    ("1:2-2:3", 9.0, 60, 78.0, 9.0),  # worse than anchor 1 and costlier: off the front
    ("1:5-2:6", 9.5, 60, 80.0, 10.0),
]


def test_select_most_accurate_within_budget():
    res = _results(HAND)
    assert str(select(res, max_gmacs=3.0).stitch) == "0:5-1:6"  # tie -> cheaper -> first
    assert str(select(res, max_gmacs=3.0, max_latency_ms=4.2).stitch) == "0:5-1:6"
    assert str(select(res, max_gmacs=3.0, max_latency_ms=3.9).stitch) == "0:3-1:4"
    assert str(select(res, max_gmacs=9.2).stitch) == "1"
    assert str(select(res, max_params=60).stitch) == "1:5-2:6"
    assert str(select(res, max_latency_ms=100).stitch) == "2"
    assert str(select(res, max_gmacs=1.25).stitch) == "0"  # the budget is inclusive


def test_select_cheapest_above_a_floor():
    res = _results(HAND)
    assert str(select(res, min_top1=76).stitch) == "0:5-1:6"
    assert str(select(res, min_top1=78).stitch) == "1"
    assert str(select(res, min_top1=80, cost="latency_ms").stitch) == "1:5-2:6"
    # floor and budget together: the most accurate stitch that meets both
    assert str(select(res, min_top1=74, max_gmacs=5).stitch) == "1"


def test_select_exact_duplicates_are_deterministic():
    rows = [("0:5-1:6", 3.0, 12, 76.0, 4.0), ("0:6-1:6", 3.0, 12, 76.0, 4.0), ("0", 1, 5, 70, 2)]
    assert str(select(_results(rows), max_gmacs=3).stitch) == "0:5-1:6"
    assert str(select(_results(rows[::-1]), max_gmacs=3).stitch) == "0:6-1:6"  # first listed
    assert [str(r.stitch) for r in _results(rows).pareto("gmacs", complete=True)] == [
        "0",
        "0:5-1:6",
        "0:6-1:6",
    ]


def test_select_infeasible_budgets_name_the_nearest_stitch():
    res = _results(HAND)
    with pytest.raises(
        ValueError, match=r"no stitch fits 0.5 GMACs; the cheapest is '0' at 1.25 GMACs"
    ):
        select(res, max_gmacs=0.5)
    with pytest.raises(
        ValueError, match=r"no stitch fits at least 90.00 % top-1; the most accurate is '2'"
    ):
        select(res, min_top1=90)
    with pytest.raises(
        ValueError,
        match=r"no stitch fits 3 GMACs and at least 79.00 % top-1; the nearest is '0:5-1:6' at 3 GMACs, 76.00 % top-1",
    ):
        select(res, max_gmacs=3, min_top1=79)
    with pytest.raises(ValueError, match="give a budget"):
        select(res)


def test_select_on_fields_not_measured():
    rows = [(s, g, p, t, None) for s, g, p, t, _ in HAND]
    res = _results(rows)
    with pytest.raises(ValueError, match=r"no stitch has latency_ms measured; run `snnet latency"):
        select(res, max_latency_ms=5)
    res.update("0", latency_ms=1.0)
    with pytest.raises(ValueError, match=r"measured for only 1 of 8 stitches.*resumes"):
        select(res, max_latency_ms=5)
    no_acc = _results([(s, g, p, None, lat) for s, g, p, _, lat in HAND])
    with pytest.raises(ValueError, match=r"no stitch has top1 measured; run `snnet evaluate"):
        select(no_acc, max_gmacs=3)
    with pytest.raises(ValueError, match="hold no stitches"):
        select(Results([]), max_gmacs=3)


def test_pareto_over_any_cost():
    res = _results(HAND)
    assert [str(r.stitch) for r in res.pareto("gmacs", complete=True)] == [
        "0", "0:3-1:4", "0:5-1:6", "0:6-1:6", "1", "1:5-2:6", "2",
    ]  # fmt: skip
    assert [str(r.stitch) for r in res.pareto("latency_ms", complete=True)] == [
        "0", "0:3-1:4", "0:5-1:6", "1", "1:5-2:6", "2",
    ]  # fmt: skip
