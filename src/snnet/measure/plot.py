"""Accuracy against cost for every stitch, with the Pareto front and the anchors, as a PNG.

The cost axis reads in the unit that fits the family (:meth:`Field.unit_for
<snnet.measure.results.Field.unit_for>`: MMACs for the demo family, GMACs for ImageNet models) and
is logarithmic where the anchors' costs span :data:`LOG_SPAN` times or more, as in the SN-Net
papers' plots; stitches are coloured by the anchors they join.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnet.files import atomic_write, check_writable
from snnet.measure.results import FIELDS, Record, Results

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A cost axis is logarithmic when the most expensive anchor costs this many times the cheapest.
LOG_SPAN = 3.0


def plot_results(
    results: Results,
    path: str | Path,
    *,
    cost: str = "gmacs",
    metric: str | None = None,
    title: str | None = None,
) -> Path:
    """Write :func:`pareto_figure` of ``results`` as a PNG, atomically; returns ``path``.

    Example:
        >>> plot_results(Results.load("runs/demo/results.json"), "runs/demo/pareto.png")
        >>> plot_results(results, "latency.png", cost="latency_ms")
    """
    results.pareto(cost, metric)  # refuses an unknown cost or metric before the path is checked
    check_writable(path)
    fig = pareto_figure(results, cost=cost, metric=metric, title=title)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png"), mode="path")
    return path


def pareto_figure(
    results: Results, *, cost: str = "gmacs", metric: str | None = None, title: str | None = None
) -> Figure:
    """``metric`` (default: the task's, e.g. top-1 or mIoU) against ``cost`` for every measured
    stitch as a matplotlib ``Figure``: stitches coloured by the anchors they join, anchors as
    labelled stars, the Pareto front as a step line (the best value within each budget).

    Example:
        >>> fig = pareto_figure(results)
        >>> fig.axes[0].get_xlabel()
        'MMACs per image (multiply-adds)'
    """
    metric = metric or results.metric
    front = results.pareto(cost, metric)  # also refuses an unknown cost or metric
    rows = [r for r in results if getattr(r, cost) is not None and getattr(r, metric) is not None]
    if not rows:
        need = metric if all(getattr(r, cost) is not None for r in results) else cost
        raise ValueError(
            f"no stitch has {need} measured in these results: run `{FIELDS[need].measured_by}` first"
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display needed
    from matplotlib.figure import Figure

    unit = FIELDS[cost].unit_for(getattr(r, cost) for r in rows)
    names = list(results.network.get("anchors") or [])
    if len(set(names)) < len(names):  # repeated names: tell the anchors apart by index
        names = [f"{n} #{i}" for i, n in enumerate(names)]

    def xy(r: Record) -> tuple[float, float]:
        return getattr(r, cost) * unit.factor, getattr(r, metric)

    fig = Figure(figsize=(8, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    anchors = [r for r in rows if len(r.stitch.route) == 1]
    log = _spans(anchors, cost)
    if log:
        _log_axis(ax)
    _stitches(ax, rows, names, xy)

    fx, fy = zip(*map(xy, front), strict=True)
    ax.plot(fx, fy, drawstyle="steps-post", color="black", lw=1.2, zorder=3,
            label=f"Pareto front ({len(front)} stitches)")  # fmt: skip
    ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black", lw=1.0, zorder=3)
    _anchors(ax, anchors, rows, names, xy, log=log)

    ax.set_xlabel(FIELDS[cost].axis.format(unit=unit.name))
    ax.set_ylabel(FIELDS[metric].axis)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    if title is None:
        title = f"SN-Net: {len(rows)} stitches of {', '.join(names) or 'the anchors'}"
        meta = results.meta.get("accuracy") or {}
        if meta.get("data") and meta.get("images"):
            title += f"\n{FIELDS[metric].axis.split(' (')[0]} on {meta['images']} images of {meta['data']}"
    ax.set_title(title, fontsize=10)
    return fig


def _spans(anchors: list[Record], cost: str) -> bool:
    """Whether the anchors' costs span :data:`LOG_SPAN` times or more."""
    costs = [getattr(r, cost) for r in anchors]
    return len(costs) > 1 and min(costs) > 0 and max(costs) / min(costs) >= LOG_SPAN


def _log_axis(ax: Any) -> None:
    """A logarithmic x axis labelled at 1, 2 and 5 times each power of ten, in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _stitches(ax: Any, rows: list[Record], names: list[str], xy: Any) -> None:
    """Every stitch, one colour per route (the anchors it joins, in order)."""
    groups: dict[tuple[int, ...], list[Record]] = {}
    for r in rows:
        if len(r.stitch.route) > 1:
            groups.setdefault(r.stitch.route, []).append(r)
    for route, members in sorted(groups.items()):
        xs, ys = zip(*map(xy, members), strict=True)
        text = " → ".join(_name(names, a) for a in route)
        ax.scatter(xs, ys, s=22, alpha=0.75, label=f"{text} ({len(members)})", zorder=2)


def _anchors(
    ax: Any, anchors: list[Record], rows: list[Record], names: list[str], xy: Any, *, log: bool
) -> None:
    """The anchors as stars, each labelled towards the inside of the plot."""
    if not anchors:
        return
    ax_, ay = zip(*map(xy, anchors), strict=True)
    ax.scatter(ax_, ay, marker="*", s=220, color="crimson", edgecolors="black", lw=0.6,
               zorder=4, label="anchors")  # fmt: skip
    scale = math.log if log else float
    xs = [scale(xy(r)[0]) for r in rows if not log or xy(r)[0] > 0]
    middle = (min(xs) + max(xs)) / 2
    for r, x, y in zip(anchors, ax_, ay, strict=True):
        right = scale(x) > middle
        ax.annotate(
            _name(names, r.stitch.route[0]),
            (x, y),
            xytext=(-8 if right else 8, -14),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=9,
            fontweight="bold",
        )


def _name(names: list[str], anchor: int) -> str:
    return names[anchor] if anchor < len(names) else f"anchor {anchor}"
