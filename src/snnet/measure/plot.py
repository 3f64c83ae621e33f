"""Accuracy against cost for every stitch, with the Pareto front and the anchors, as a PNG."""

from __future__ import annotations

from pathlib import Path

from snnet.files import atomic_write, check_writable
from snnet.measure.results import FIELDS, Record, Results


def plot_results(
    results: Results,
    path: str | Path,
    *,
    cost: str = "gmacs",
    metric: str = "top1",
    title: str | None = None,
) -> Path:
    """Write a PNG of ``metric`` against ``cost`` for every measured stitch: stitches coloured by
    the anchors they join, anchors as labelled stars, the Pareto front as a step line (the best
    accuracy within each budget). Written atomically; returns ``path``.

    Example:
        >>> plot_results(Results.load("runs/demo/results.json"), "runs/demo/pareto.png")
        >>> plot_results(results, "latency.png", cost="latency_ms")
    """
    front = results.pareto(cost, metric)  # also refuses an unknown cost or metric
    check_writable(path)
    rows = [r for r in results if getattr(r, cost) is not None and getattr(r, metric) is not None]
    if not rows:
        need = metric if all(getattr(r, cost) is not None for r in results) else cost
        raise ValueError(
            f"no stitch has {need} measured in these results: run `{FIELDS[need].measured_by}` first"
        )

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display needed
    from matplotlib.figure import Figure

    label, scale = FIELDS[cost].axis, FIELDS[cost].axis_scale
    names = list(results.network.get("anchors") or [])
    if len(set(names)) < len(names):  # repeated names: tell the anchors apart by index
        names = [f"{n} #{i}" for i, n in enumerate(names)]

    def xy(r: Record) -> tuple[float, float]:
        return getattr(r, cost) * scale, getattr(r, metric)

    fig = Figure(figsize=(8, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict[tuple[int, ...], list[Record]] = {}
    for r in rows:
        if len(r.stitch.route) > 1:
            groups.setdefault(r.stitch.route, []).append(r)
    for route, members in sorted(groups.items()):
        xs, ys = zip(*map(xy, members), strict=True)
        text = " → ".join(_name(names, a) for a in route)
        ax.scatter(xs, ys, s=22, alpha=0.75, label=f"{text} ({len(members)})", zorder=2)

    fx, fy = zip(*map(xy, front), strict=True)
    ax.plot(fx, fy, drawstyle="steps-post", color="black", lw=1.2, zorder=3,
            label=f"Pareto front ({len(front)} stitches)")  # fmt: skip
    ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black", lw=1.0, zorder=3)

    anchors = [r for r in rows if len(r.stitch.route) == 1]
    if anchors:
        ax_, ay = zip(*map(xy, anchors), strict=True)
        ax.scatter(ax_, ay, marker="*", s=220, color="crimson", edgecolors="black", lw=0.6,
                   zorder=4, label="anchors")  # fmt: skip
        middle = (min(r[0] for r in map(xy, rows)) + max(r[0] for r in map(xy, rows))) / 2
        for r, x, y in zip(anchors, ax_, ay, strict=True):
            right = x > middle  # label towards the inside of the plot
            ax.annotate(
                _name(names, r.stitch.route[0]),
                (x, y),
                xytext=(-8 if right else 8, -14),
                textcoords="offset points",
                ha="right" if right else "left",
                fontsize=9,
                fontweight="bold",
            )

    ax.set_xlabel(label)
    ax.set_ylabel(FIELDS[metric].axis)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    if title is None:
        title = f"SN-Net: {len(rows)} stitches of {', '.join(names) or 'the anchors'}"
        meta = results.meta.get("accuracy") or {}
        if meta.get("data") and meta.get("images"):
            title += f"\n{FIELDS[metric].axis.split(' (')[0]} on {meta['images']} images of {meta['data']}"
    ax.set_title(title, fontsize=10)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png"), mode="path")
    return path


def _name(names: list[str], anchor: int) -> str:
    return names[anchor] if anchor < len(names) else f"anchor {anchor}"
