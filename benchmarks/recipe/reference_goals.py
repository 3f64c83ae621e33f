"""The demo benchmark's goals, measured on the SN-Net authors' own released results.

`bench_demo_family.py` asks of the demo's front: at least 10 stitches on it, every front stitch
0.5 point above the anchor it follows, no MACs gap wider than 2x, anchors within 0.5 point of
standalone. This script asks the same of the per-stitch ImageNet results the SN-Net authors
publish beside their code (``stitching_deit/results/stitches_res.txt``,
``stitching_swin/...``, ``stitching_levit/...`` in github.com/ziplab/SN-Net: one JSON object
per line with ``cfg_id``, ``flops``, ``acc1``; ids 0..n-1 are the anchors, smallest first),
to tell which goals the method itself meets on the data it was built for.

A front stitch's margin is taken over the anchor it follows: the costliest anchor cheaper than
it, but never the largest (a stitch starts in a smaller anchor than it ends in; the files do not
name a stitch's anchors, and a stitch's cost places it between the two it joins). Standalone accuracies are the ones the anchors' papers publish.

    python benchmarks/recipe/reference_goals.py \
        deit=SN-Net/stitching_deit/results/stitches_res.txt \
        swin=SN-Net/stitching_swin/results/stitches_res.txt \
        levit=SN-Net/stitching_levit/results/stitches_res.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from snnet.files import atomic_write
from snnet.measure.pareto import pareto_front

# ImageNet-1k top-1 of the anchors trained alone, as published: DeiT (Touvron et al. 2021,
# Table 1), Swin (Liu et al. 2021, Table 1a), LeViT (Graham et al. 2021, Table 3).
STANDALONE = {
    "deit": [72.2, 79.8, 81.8],
    "swin": [81.3, 83.0, 83.5],
    "levit": [80.0, 81.6],
}
OUT = Path(__file__).parent / "results" / "reference_goals.json"


def goals(rows: list[dict], standalone: list[float]) -> dict:
    """The four figures of one family's results (``rows``: the file's objects)."""
    n = len(standalone)
    anchors = sorted((r for r in rows if r["cfg_id"] < n), key=lambda r: r["cfg_id"])
    front = pareto_front(rows, cost=lambda r: r["flops"], value=lambda r: r["acc1"])
    margins = []
    for r in front:
        if r["cfg_id"] < n:
            continue
        cheaper = [a for a in anchors[:-1] if a["flops"] < r["flops"]]
        follows = max(cheaper, key=lambda a: a["flops"])
        margins.append(
            {
                "cfg_id": r["cfg_id"],
                "follows_anchor": follows["cfg_id"],
                "cost_ratio": round(r["flops"] / follows["flops"], 2),
                "margin": round(r["acc1"] - follows["acc1"], 3),  # 50,000 images: steps of 0.002
            }
        )
    gaps = [
        (b["flops"] / a["flops"], a["cfg_id"], b["cfg_id"]) for a, b in itertools.pairwise(front)
    ]
    ratio, frm, to = max(gaps)
    return {
        "networks": len(rows),
        "anchors_standalone": standalone,
        "anchors_in_snnet": [round(a["acc1"], 2) for a in anchors],
        "anchor_change": [
            round(a["acc1"] - s, 2) for a, s in zip(anchors, standalone, strict=True)
        ],
        "stitches_on_front": len(margins),
        "min_front_margin": min(m["margin"] for m in margins),
        "front_margins_under_0.5": sum(m["margin"] < 0.5 for m in margins),
        "widest_gap": {"ratio": round(ratio, 2), "from_cfg": frm, "to_cfg": to},
        "front_margins": sorted(margins, key=lambda m: (m["follows_anchor"], m["cost_ratio"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="FAMILY=PATH, FAMILY one of deit, swin, levit")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    figures = {}
    for item in args.results:
        family, _, path = item.partition("=")
        if family not in STANDALONE or not path:
            parser.error(f"{item!r}: give FAMILY=PATH with FAMILY one of {sorted(STANDALONE)}")
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        figures[family] = goals(rows, STANDALONE[family])
    text = json.dumps(figures, indent=2) + "\n"
    atomic_write(args.out, lambda f: f.write(text))
    print(
        "| family | stitches on front | min front margin (under 0.5) | widest gap | anchor change |"
    )
    print("|---|---|---|---|---|")
    for family, f in figures.items():
        change = " / ".join(f"{c:+.2f}" for c in f["anchor_change"])
        print(
            f"| {family} | {f['stitches_on_front']} | {f['min_front_margin']:+.3f} "
            f"({f['front_margins_under_0.5']}) | {f['widest_gap']['ratio']:.2f}x | {change} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
