"""Plots that read like the paper's: the cost in a unit that fits the family, a log cost axis
where the anchors span several times, one colour per pair of anchors, the front and the anchors."""

import pytest

from snnet import Stitch
from snnet.measure.plot import pareto_figure, plot_results
from snnet.measure.results import FIELDS, Record, Results


@pytest.mark.parametrize(
    "field, values, unit",
    [
        ("gmacs", [0.0002, 0.0007, 0.0026], "MMACs"),  # the demo family
        ("gmacs", [1.3, 4.6, 17.6], "GMACs"),  # DeiT-Ti/S/B
        ("gmacs", [], "MMACs"),  # no values: the smallest unit, as tables always showed
        ("params", [11_114, 40_650, 150_218], "k"),
        ("params", [5_717_416, 86_567_656], "M"),
        ("latency_ms", [0.2, 3.0], ""),  # shown as stored
    ],
)
def test_the_unit_fits_the_values(field, values, unit):
    assert FIELDS[field].unit_for(values).name == unit


def _results(macs: list[float]) -> Results:
    """Three anchors of ``macs`` GMACs and one stitch between each neighbouring pair."""
    rows = [
        Record(Stitch.anchor(i), g, 1000 * (i + 1), top1=80.0 + 3 * i) for i, g in enumerate(macs)
    ]
    for i in range(len(macs) - 1):
        cost = (macs[i] + macs[i + 1]) / 2
        rows.append(Record(Stitch.parse(f"{i}:5-{i + 1}:6"), cost, 1500, top1=81.0 + 3 * i))
    return Results(rows, network={"anchors": ["xs", "s", "m"]})


def test_the_demo_family_reads_in_mmacs_on_a_log_axis():
    ax = pareto_figure(_results([0.0002, 0.0007, 0.0026])).axes[0]
    assert ax.get_xlabel() == "MMACs per image (multiply-adds)" and ax.get_xscale() == "log"
    xs = sorted(x for c in ax.collections for x, _ in c.get_offsets())
    assert xs[0] == pytest.approx(0.2) and xs[-1] == pytest.approx(2.6)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["xs → s (1)", "s → m (1)", "Pareto front (5 stitches)", "anchors"]


def test_anchors_close_in_cost_keep_a_linear_axis(tmp_path):
    ax = pareto_figure(_results([1.0, 1.5, 2.5])).axes[0]
    assert ax.get_xlabel() == "GMACs per image (multiply-adds)" and ax.get_xscale() == "linear"
    out = plot_results(_results([1.0, 1.5, 2.5]), tmp_path / "p.png", cost="params")
    assert out.read_bytes()[:4] == b"\x89PNG"
