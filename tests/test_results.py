import json
from dataclasses import dataclass, fields

import pytest

from snnet import Stitch
from snnet.measure.pareto import pareto_front
from snnet.measure.results import COSTS, FIELDS, METRICS, VERSION, Record, Results, format_table


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
    (tmp_path / "empty.json").write_text(
        json.dumps({"format": "snnet-results", "version": 1, "records": []})
    )
    with pytest.raises(ValueError, match="no results"):
        Results.load(tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Results.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        Results.load(tmp_path / "nope.json")


# -- fields, the front of a results table, the table ------------------------------------------
def _demo_like() -> Results:
    rows = [
        ("0", 0.00075, 40650, 85.47, 99.43),
        ("1", 0.002754, 155018, 86.9, 99.56),
        ("2", 0.010522, 604938, 84.0, 99.62),  # an anchor off the front
        ("0:11-1:10", 0.001214, 66794, 85.63, 99.39),
        ("1:1-2:1", 0.010114, 580298, 87.44, 99.61),
        ("1:10-2:10", 0.004307, 244778, 86.5, 99.58),  # off the front
    ]
    return Results(
        [Record(Stitch.parse(s), g, p, top1=t, top5=t5) for s, g, p, t, t5 in rows],
        network={"anchors": ["vit_s", "vit_m", "vit_l"]},
    )


# The demo's table as snnet printed it before the table had one home (README's example).
DEMO_TABLE = (
    "stitch       MMACs   params  top-1 %  top-5 %  Pareto\n"
    "0 (vit_s)    0.750    40650    85.47    99.43  *\n"
    "0:11-1:10    1.214    66794    85.63    99.39  *\n"
    "1 (vit_m)    2.754   155018    86.90    99.56  *\n"
    "1:1-2:1     10.114   580298    87.44    99.61  *\n"
    "2 (vit_l)   10.522   604938    84.00    99.62  "
)


def test_the_demo_prints_its_table_through_the_one_formatter():
    from pathlib import Path

    from snnet.demo import DemoReport, format_report

    res = _demo_like()
    front = {r.stitch for r in res.pareto()}
    shown = [r.stitch for r in res if r.stitch in front or r.stitch.is_anchor]
    assert format_table(res, shown, names=["vit_s", "vit_m", "vit_l"]) == DEMO_TABLE
    report = DemoReport(
        run_dir=Path("runs/demo"),
        results_path=Path("runs/demo/results.json"),
        plot_path=Path("runs/demo/pareto.png"),
        model_dir=Path("runs/demo/train/model"),
        seconds={"train": 161.2},
        anchors_before=[86.23, 87.7, 88.5],
        anchors_after=[85.47, 86.9, 84.0],
        pareto=[],
    )
    text = format_report(report, res, ["vit_s", "vit_m", "vit_l"])
    assert text.startswith(DEMO_TABLE + "\n\n6 stitches evaluated; 4 on the Pareto front")


def test_table_columns_follow_what_is_measured():
    res = _demo_like()
    res.update("1", latency_ms=2.5, latency_p90_ms=3.0)
    lines = format_table(res, cost="latency_ms").splitlines()
    assert lines[0].split() == ["stitch", "MMACs", "params", "ms", "p90", "ms", "top-1", "%",
                                "top-5", "%", "Pareto"]  # fmt: skip
    assert lines[1].split()[0] == "1" and lines[1].endswith("*")  # the only row with a latency
    assert len(lines) == 1 + len(res)
    # Costs only (snnet stitches): no accuracy, no Pareto column; big networks in GMACs.
    costs = Results([Record(Stitch.parse("0"), 1.26, 5_717_416), Record(Stitch.parse("1"), 4.6, 1)])
    assert format_table(costs).splitlines() == [
        "stitch    GMACs   params",
        "0         1.260  5717416",
        "1         4.600        1",
    ]


def test_fields_describe_every_measurement():
    measured = [f.name for f in fields(Record) if f.name != "stitch"]
    assert sorted(FIELDS) == sorted(measured)
    assert set(COSTS) | set(METRICS) == set(FIELDS) and not set(COSTS) & set(METRICS)
    row = Record(Stitch.parse("0:5-1:6"), 3.0, 12000, top1=76.0)
    assert row.describe() == "3 GMACs, 12,000 params, 76.00 % top-1"
    res = _demo_like()
    with pytest.raises(ValueError, match="unknown field 'flops'; choose from gmacs"):
        res.pareto("flops")
    with pytest.raises(ValueError, match="'top1' is not a cost"):
        res.pareto("top1", "top5")
    with pytest.raises(ValueError, match="no stitch has latency_ms measured; run `snnet latency"):
        res.pareto("latency_ms", complete=True)
    assert res.pareto("latency_ms") == []  # over the stitches where both are measured


def test_results_files_are_read_by_the_one_reader(tmp_path):
    res = _demo_like()
    path = res.save(tmp_path / "results.json")
    assert json.loads(path.read_text())["version"] == VERSION
    (tmp_path / "config.json").write_text(json.dumps({"format": "snnet", "version": 1}))
    with pytest.raises(ValueError, match=r"not an snnet results file \(format='snnet'\); give a"):
        Results.load(tmp_path / "config.json")
    newer = {**json.loads(path.read_text()), "version": VERSION + 1}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="newer snnet"):
        Results.load(tmp_path / "newer.json")
