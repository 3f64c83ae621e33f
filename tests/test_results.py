import json
from dataclasses import dataclass

import pytest

from snnet import Stitch
from snnet.pareto import pareto_front
from snnet.results import Record, Results


@dataclass(frozen=True)
class P:
    name: str
    cost: float
    acc: float


def front(*points):
    return [p.name for p in pareto_front(points, lambda p: p.cost, lambda p: p.acc)]


def test_pareto_basic_and_sorted_by_cost():
    assert front(P("c", 3, 80), P("a", 1, 70), P("x", 2, 65), P("b", 2, 75)) == ["a", "b", "c"]


def test_pareto_ties_and_duplicates():
    # same cost: only the most accurate; same accuracy: only the cheapest; exact duplicates: both
    assert front(P("a", 1, 70), P("a2", 1, 69)) == ["a"]
    assert front(P("a", 1, 70), P("b", 2, 70)) == ["a"]
    assert front(P("a", 1, 70), P("dup", 1, 70), P("b", 2, 71)) == ["a", "dup", "b"]
    assert front() == []


def test_pareto_matches_brute_force():
    import random

    rng = random.Random(0)
    pts = [P(str(i), rng.randint(0, 6), rng.randint(0, 6)) for i in range(60)]

    def dominated(p):
        return any(
            (q.cost <= p.cost and q.acc > p.acc) or (q.cost < p.cost and q.acc >= p.acc)
            for q in pts
        )

    assert sorted(front(*pts)) == sorted(p.name for p in pts if not dominated(p))


def test_results_round_trip_and_errors(tmp_path):
    rows = [Record(Stitch.parse("0"), 1.0, 10, top1=70.0), Record(Stitch.parse("0:1-1:2"), 2.0, 20)]
    res = Results(rows, network={"anchors": ["a", "b"]}, meta={"images": 100})
    res.update("0:1-1:2", top1=75.5, top5=90.0)
    assert res.missing("latency_ms") == [r.stitch for r in rows]
    path = res.save(tmp_path / "results.json")
    back = Results.load(path)
    assert list(back) == list(res) and back.meta == {"images": 100}
    assert (
        (tmp_path / "results.csv")
        .read_text()
        .splitlines()[0]
        .startswith("stitch,gmacs,params,top1")
    )
    assert [r.stitch for r in back.pareto()] == [Stitch.parse("0"), Stitch.parse("0:1-1:2")]
    (tmp_path / "empty.json").write_text(json.dumps({"format": "snnet-results", "records": []}))
    with pytest.raises(ValueError, match="no results"):
        Results.load(tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Results.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        Results.load(tmp_path / "nope.json")
