"""Measurements of every stitch of one network: one row per stitch, saved as JSON and CSV.

This module is the one home of what a measurement means (:data:`FIELDS`: unit, formatting, which
way is better, which command measures it), of the Pareto front of a results table
(:meth:`Results.pareto`) and of how a table of stitches is printed (:func:`format_table`).
It imports no torch, so ``snnet --help`` and the CLI's option lists stay fast.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from snnet.files import atomic_write, read_json_config
from snnet.measure.pareto import pareto_front
from snnet.stitch import Stitch
from snnet.task import metric_of

if TYPE_CHECKING:
    from snnet.network import SNNet

FORMAT = "snnet-results"
VERSION = 1


@dataclass(frozen=True)
class Unit:
    """A unit to show a field's values in: a stored value ``v`` reads ``v * factor`` ``name``."""

    name: str
    factor: float = 1.0


@dataclass(frozen=True)
class Field:
    """What one measured column of :class:`Record` means.

    ``prose`` formats a value inside a sentence (``3 GMACs``), ``heading``/``cell`` a table column
    (a format spec without width: widths follow the values), ``axis`` labels a plot axis.
    ``units``, largest first, are the units its values can be shown in; :meth:`unit_for` picks
    the one that fits the values at hand (the demo family's MACs read as MMACs, ImageNet models'
    as GMACs), and ``{unit}`` in ``heading`` or ``axis`` names it there. ``measured_by`` is the
    command that fills the field, named in errors when it is missing. ``role``: a ``cost``
    (what a stitch spends: an x axis, a budget) or a ``metric`` (how well it predicts, better
    ``higher`` like top-1 and mIoU or ``lower`` like AbsRel).
    """

    name: str
    better: Literal["lower", "higher"]
    prose: str
    heading: str
    cell: str
    axis: str
    measured_by: str
    units: tuple[Unit, ...] = ()
    role: Literal["cost", "metric"] = "metric"

    @property
    def sign(self) -> float:
        """``1.0`` where higher is better, ``-1.0`` where lower is: ``sign * value`` ranks
        stitches best last, whichever way the field points."""
        return 1.0 if self.better == "higher" else -1.0

    def format(self, value: float) -> str:
        """``value`` in a sentence, e.g. ``FIELDS["gmacs"].format(3.0) == "3 GMACs"``."""
        return self.prose.format(value)

    def unit_for(self, values: Iterable[float | None]) -> Unit:
        """The largest of :attr:`units` in which the largest of ``values`` is at least 1 (else
        the smallest unit; a field without units is shown as stored).

        Example:
            >>> FIELDS["gmacs"].unit_for([0.0002, 0.003])
            Unit(name='MMACs', factor=1000.0)
        """
        if not self.units:
            return Unit("")
        top = max((abs(v) for v in values if v is not None), default=0.0)
        return next((u for u in self.units if top * u.factor >= 1), self.units[-1])


_COSTS_BY = "snnet latency MODEL_DIR (or Results.for_network) fills costs"
_LATENCY_BY = "snnet latency MODEL_DIR --results RESULTS"
_ACCURACY_BY = "snnet evaluate MODEL_DIR --out RESULTS"
_MACS = (Unit("GMACs"), Unit("MMACs", 1e3))
_PARAMS = (Unit("M", 1e-6), Unit("k", 1e-3))

#: Every measured field of :class:`Record`, in the order tables show them.
FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("gmacs", "lower", "{:.3g} GMACs", "{unit}", ".3f",
              "{unit} per image (multiply-adds)", _COSTS_BY, _MACS, "cost"),
        Field("params", "lower", "{:,} params", "params", "d",
              "parameters ({unit})", _COSTS_BY, _PARAMS, "cost"),
        Field("latency_ms", "lower", "{:.3g} ms", "ms", ".2f",
              "latency (ms per batch, median)", _LATENCY_BY, role="cost"),
        Field("latency_p90_ms", "lower", "{:.3g} ms p90", "p90 ms", ".2f",
              "latency (ms per batch, 90th percentile)", _LATENCY_BY, role="cost"),
        Field("top1", "higher", "{:.2f} % top-1", "top-1 %", ".2f",
              "top-1 accuracy (%)", _ACCURACY_BY),
        Field("top5", "higher", "{:.2f} % top-5", "top-5 %", ".2f",
              "top-5 accuracy (%)", _ACCURACY_BY),
        Field("miou", "higher", "{:.2f} % mIoU", "mIoU %", ".2f",
              "mIoU (%)", _ACCURACY_BY),
        Field("pixel_acc", "higher", "{:.2f} % pixel accuracy", "pix. acc %", ".2f",
              "pixel accuracy (%)", _ACCURACY_BY),
        Field("absrel", "lower", "AbsRel {:.4f}", "AbsRel", ".4f",
              "AbsRel (mean |d - g| / g, lower is better)", _ACCURACY_BY),
        Field("rmse", "lower", "RMSE {:.3f} m", "RMSE m", ".3f",
              "RMSE (m, lower is better)", _ACCURACY_BY),
        Field("delta1", "higher", "{:.2f} % δ<1.25", "δ<1.25 %", ".2f",
              "δ < 1.25 (%)", _ACCURACY_BY),
    )
}  # fmt: skip
#: Costs (x axes, budgets) and metrics (y axes; better higher or lower, see Field.better).
COSTS = tuple(n for n, f in FIELDS.items() if f.role == "cost")
METRICS = tuple(n for n, f in FIELDS.items() if f.role == "metric")
#: The fields every results file writes, measured or not (classification's); a dense task's
#: metrics are written where measured.
CORE = ("stitch", "gmacs", "params", "top1", "top5", "latency_ms", "latency_p90_ms")


def field(name: str) -> Field:
    """The :class:`Field` called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in FIELDS:
        raise ValueError(f"unknown field {name!r}; choose from {', '.join(FIELDS)}")
    return FIELDS[name]


@dataclass(frozen=True)
class Record:
    """What is known about one stitch; measurements not taken yet are ``None``."""

    stitch: Stitch
    gmacs: float
    params: int
    top1: float | None = None  # percent
    top5: float | None = None
    latency_ms: float | None = None  # median per batch
    latency_p90_ms: float | None = None
    miou: float | None = None  # percent
    pixel_acc: float | None = None  # percent
    absrel: float | None = None  # ratio
    rmse: float | None = None  # metres
    delta1: float | None = None  # percent

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k in CORE or v is not None}
        d["stitch"] = str(self.stitch)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown result fields {sorted(unknown)}")
        return cls(**{**d, "stitch": Stitch.parse(d["stitch"])})

    def describe(self) -> str:
        """Every measured field in words, e.g. ``3 GMACs, 12,000 params, 76.00 % top-1``."""
        values = ((f, getattr(self, n)) for n, f in FIELDS.items())
        return ", ".join(f.format(v) for f, v in values if v is not None)


def fingerprint(net: SNNet) -> dict[str, Any]:
    """What identifies a network's stitches: anchors, stitching options, counts, the stitches
    a front keeps, and a dense network's task."""
    out = {
        "anchors": [a.name for a in net.anchors],
        "space": net.space.config.to_json(),
        "num_stitches": len(net.stitches),
    }
    if net.space.restricted:  # a front: which stitches, not only how many
        out["stitches"] = [str(s) for s in net.stitches]
    if net.task.dense:
        out["task"] = net.task.to_json()
    return out


class Results:
    """A table of :class:`Record` keyed by stitch, plus the network it describes and how it was
    measured (``meta``: dataset, images, batch size, threads, device, ...).

    Example:
        >>> results = Results.for_network(net)          # costs filled in, accuracy to measure
        >>> results.update("0:5-1:6", top1=71.3)
        >>> results.save("runs/deit/results.json")      # also writes results.csv
        >>> front = results.pareto("gmacs", "top1")
    """

    def __init__(
        self,
        records: Iterable[Record],
        *,
        network: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.records: dict[Stitch, Record] = {r.stitch: r for r in records}
        self.network = network or {}
        self.meta = meta or {}

    @classmethod
    def for_network(cls, net: SNNet, **meta: Any) -> Results:
        rows = []
        for s in net.stitches:
            c = net.cost(s)
            rows.append(Record(s, round(c.gmacs, 6), c.params))
        return cls(rows, network=fingerprint(net), meta=meta)

    @property
    def metric(self) -> str:
        """The field stitches are ranked by: the task's primary metric (``top1``, ``miou``,
        ``absrel``)."""
        return metric_of((self.network.get("task") or {}).get("kind"))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records.values())

    def __getitem__(self, stitch: Stitch | str) -> Record:
        s = Stitch.parse(stitch)
        if s not in self.records:
            raise KeyError(f"no results for stitch {s}")
        return self.records[s]

    def update(self, stitch: Stitch | str, **values: Any) -> None:
        s = Stitch.parse(stitch)
        self.records[s] = replace(self[s], **values)

    def missing(self, field: str) -> list[Stitch]:
        """Stitches whose ``field`` is not measured yet (what a resumed run still has to do)."""
        return [r.stitch for r in self if getattr(r, field) is None]

    def check_network(self, net: SNNet) -> None:
        """Raise if these results describe another network."""
        mine = fingerprint(net)
        if self.network and self.network != mine:
            diff = [k for k in mine if self.network.get(k) != mine[k]]
            raise ValueError(
                f"these results are for another network ({', '.join(diff)} differ: "
                f"{self.network.get(diff[0])} vs {mine[diff[0]]}); measure this network anew "
                "or load the matching results file"
            )

    def require(self, name: str) -> None:
        """Raise unless field ``name`` is measured for every stitch, naming the command that
        measures it (a selection over some stitches only would silently miss the others)."""
        f = field(name)
        if len(self) == 0:
            raise ValueError("the results hold no stitches: evaluate the network first")
        missing = self.missing(name)
        if len(missing) == len(self):
            raise ValueError(f"no stitch has {name} measured; run `{f.measured_by}` first")
        if missing:
            raise ValueError(
                f"{name} is measured for only {len(self) - len(missing)} of {len(self)} "
                f"stitches (e.g. not '{missing[0]}'); finish with `{f.measured_by}` "
                "(it resumes where it stopped)"
            )

    def pareto(
        self, cost: str = "gmacs", metric: str | None = None, *, complete: bool = False
    ) -> list[Record]:
        """The exact Pareto front of ``cost`` (``gmacs``, ``params``, ``latency_ms``, ...)
        against ``metric`` (default :attr:`metric`; a metric where lower is better, such as
        ``absrel``, counts the lower value as the better one), sorted by cost, over the stitches
        where both are measured; with ``complete``, both must be measured for every stitch (see
        :meth:`require`). Ties: see :func:`pareto_front`.

        Example:
            >>> [str(r.stitch) for r in results.pareto("latency_ms", complete=True)]
        """
        metric = metric or self.metric
        if field(cost).role != "cost":
            raise ValueError(f"{cost!r} is not a cost; choose from {', '.join(COSTS)}")
        if field(metric).role != "metric":
            raise ValueError(f"{metric!r} is not a metric; choose from {', '.join(METRICS)}")
        if complete:
            self.require(cost)
            self.require(metric)
        rows = [r for r in self if getattr(r, cost) is not None and getattr(r, metric) is not None]
        sign = FIELDS[metric].sign
        return pareto_front(rows, lambda r: getattr(r, cost), lambda r: sign * getattr(r, metric))

    # -- files --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "network": self.network,
            "meta": self.meta,
            "records": [r.to_json() for r in self],
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and the same rows as CSV beside it, each atomically.

        The CSV goes first and the JSON, the file snnet reads back, last: a kill between the two
        leaves the old JSON, so a rerun measures again and rewrites both (see also
        :meth:`write_csv`)."""
        path = Path(path)
        atomic_write(path.with_suffix(".csv"), lambda f: f.write(self.to_csv()))
        atomic_write(path, lambda f: json.dump(self.to_json(), f, indent=2, sort_keys=True))
        return path

    def write_csv(self, path: str | Path) -> Path:
        """Write the CSV beside ``path`` (a results JSON) unless it already holds these rows:
        derived from the JSON, it is rewritten if missing or stale. Returns the CSV's path."""
        csv_path = Path(path).with_suffix(".csv")
        text = self.to_csv()
        if not csv_path.is_file() or csv_path.read_text() != text:
            atomic_write(csv_path, lambda f: f.write(text))
        return csv_path

    def to_csv(self) -> str:
        out = io.StringIO()
        measured = {k for r in self for k in r.to_json()}
        columns = [f.name for f in fields(Record) if f.name in measured or f.name in CORE]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self:
            writer.writerow({k: "" if v is None else v for k, v in r.to_json().items()})
        return out.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Results:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"results file {path} does not exist")
        data = read_json_config(
            path,
            FORMAT,
            VERSION,
            what="an snnet results file",
            fix="give a results.json written by `snnet evaluate` or `snnet latency`",
        )
        if not data.get("records"):
            raise ValueError(f"{path} holds no results: evaluate the network first")
        return cls(
            (Record.from_json(r) for r in data["records"]),
            network=data.get("network"),
            meta=data.get("meta"),
        )


def format_table(
    results: Results,
    stitches: Iterable[Stitch | str] | None = None,
    *,
    cost: str = "gmacs",
    metric: str | None = None,
    names: Sequence[str] = (),
    paths: Mapping[Stitch, str] | None = None,
    sort: bool = True,
) -> str:
    """The stitches of ``results`` (or only ``stitches``) as a text table, one line each.

    Rows are sorted by ``cost`` (unmeasured last) unless ``sort=False``. Columns: MACs and
    params, latency and accuracy when any shown row has them, and a ``Pareto`` column marking with
    ``*`` the front of ``cost`` against ``metric`` (default: the task's, over all of
    ``results``). ``names`` labels
    anchor rows (``0 (deit_tiny)``), ``paths`` adds a column describing each stitch. Returns the
    text; the CLI prints it.

    Example:
        >>> print(format_table(results, names=results.network["anchors"]))
        stitch       MMACs   params  top-1 %  top-5 %  Pareto
        0 (vit_s)    0.750    40650    85.47    99.43  *
    """
    metric = metric or results.metric
    rows = [results[s] for s in stitches] if stitches is not None else list(results)
    if sort:
        rows.sort(key=lambda r: (getattr(r, cost) is None, getattr(r, cost) or 0, str(r.stitch)))
    shown = [
        n
        for n in FIELDS
        if n in ("gmacs", "params", cost) or any(getattr(r, n) is not None for r in rows)
    ]
    columns: list[tuple[str, list[str], str]] = []  # (heading, cells, alignment)

    def label(s: Stitch) -> str:
        return f"{s} ({names[s.route[0]]})" if s.is_anchor and s.route[0] < len(names) else str(s)

    columns.append(("stitch", [label(r.stitch) for r in rows], "<"))
    if paths is not None:
        columns.append(("path", [paths[r.stitch] for r in rows], "<"))
    for n in shown:
        f, values = FIELDS[n], [getattr(r, n) for r in rows]
        heading, scale = f.heading, 1.0
        if "{unit}" in f.heading:  # the unit that fits these values, e.g. MMACs for the demo
            unit = f.unit_for(values)
            heading, scale = f.heading.format(unit=unit.name), unit.factor
        cells = [
            "" if v is None else format(v * scale if scale != 1 else v, f.cell) for v in values
        ]
        columns.append((heading, cells, ">"))

    widths = [max([len(h), *map(len, cells)]) for h, cells, _ in columns]
    # Numbers get at least 8 characters, so tables of similar networks line up.
    widths = [
        w if align == "<" else max(w, 8) for w, (_, _, align) in zip(widths, columns, strict=True)
    ]

    def line(cells: list[str]) -> str:
        return " ".join(
            f"{c:{a}{w}}" for c, w, (_, _, a) in zip(cells, widths, columns, strict=True)
        )

    lines = [line([h for h, _, _ in columns])]
    body = [line([cells[i] for _, cells, _ in columns]) for i in range(len(rows))]
    if any(getattr(r, metric) is not None and getattr(r, cost) is not None for r in results):
        front = {r.stitch for r in results.pareto(cost, metric)}
        lines[0] += "  Pareto"
        body = [f"{b}  {'*' if r.stitch in front else ''}" for b, r in zip(body, rows, strict=True)]
    return "\n".join(lines + body)


# -- comparing rankings and fronts ------------------------------------------------------------


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's rank correlation tau-b of two equally long score lists (ties allowed): +1 when
    ``a`` and ``b`` order every pair alike, -1 when every pair oppositely, about 0 when unrelated.
    Pairs tied in one list count neither way, and the tie correction keeps the range [-1, 1].
    NaN when either list has every value tied (no order to compare). O(n²), which is instant for
    the few hundred stitches of a family.

    Example:
        >>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
        0.6666666666666666
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau needs lists of equal length, got {len(a)} and {len(b)}")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0:
                ties_a += 1
            if db == 0:
                ties_b += 1
            if da and db:
                if (da > 0) == (db > 0):
                    concordant += 1
                else:
                    discordant += 1
    pairs = len(a) * (len(a) - 1) // 2
    denominator = ((pairs - ties_a) * (pairs - ties_b)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def hypervolume(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area that ``points`` (cost, value; lower cost and higher value are better) dominate
    up to ``reference`` (a worst cost, a worst value): the union over the points of the boxes
    [cost, reference cost] × [reference value, value]. Only the Pareto front contributes, so any
    points may be passed; points outside the reference add nothing. One number that grows both
    when a front reaches higher and when it fills its gaps.

    Example:
        >>> hypervolume([(1, 3), (2, 4)], reference=(4, 0))   # 3·3 + 2·1
        11.0
    """
    ref_cost, ref_value = reference
    inside = sorted((c, v) for c, v in points if c < ref_cost and v > ref_value)
    area, best = 0.0, ref_value
    # Sweep by cost: each point adds the strip between the best value of cheaper points and its
    # own, from its cost to the reference cost.
    for c, v in inside:
        if v > best:
            area += (ref_cost - c) * (v - best)
            best = v
    return float(area)
