"""Measurements of every stitch of one network: one row per stitch, saved as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from snnet.files import atomic_write
from snnet.network import SNNet
from snnet.pareto import pareto_front
from snnet.stitch import Stitch

FORMAT = "snnet-results"


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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stitch"] = str(self.stitch)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown result fields {sorted(unknown)}")
        return cls(**{**d, "stitch": Stitch.parse(d["stitch"])})


def fingerprint(net: SNNet) -> dict[str, Any]:
    """What identifies a network's stitches: anchors, stitching options, counts."""
    return {
        "anchors": [a.name for a in net.anchors],
        "space": net.space.config.to_json(),
        "num_stitches": len(net.stitches),
    }


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

    def pareto(self, cost: str = "gmacs", metric: str = "top1") -> list[Record]:
        """The Pareto front of ``cost`` (lower is better) against ``metric`` (higher is better)
        over the stitches where both are measured."""
        rows = [r for r in self if getattr(r, cost) is not None and getattr(r, metric) is not None]
        return pareto_front(rows, lambda r: getattr(r, cost), lambda r: getattr(r, metric))

    # -- files --------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "network": self.network,
            "meta": self.meta,
            "records": [r.to_json() for r in self],
        }

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and the same rows as CSV beside it, each atomically."""
        path = Path(path)
        atomic_write(path, lambda f: json.dump(self.to_json(), f, indent=2, sort_keys=True))
        atomic_write(path.with_suffix(".csv"), lambda f: f.write(self.to_csv()))
        return path

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=[f.name for f in fields(Record)], lineterminator="\n"
        )
        writer.writeheader()
        for r in self:
            writer.writerow({k: "" if v is None else v for k, v in r.to_json().items()})
        return out.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Results:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); is it an snnet results file?") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an snnet results file (written by `snnet evaluate`)")
        if not data.get("records"):
            raise ValueError(f"{path} holds no results: evaluate the network first")
        return cls(
            (Record.from_json(r) for r in data["records"]),
            network=data.get("network"),
            meta=data.get("meta"),
        )
