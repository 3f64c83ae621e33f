"""Print the markdown table of every recipe run in results/ (for FINDINGS.md)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    print(
        "| run | steps | anchors standalone → in SN-Net (top-1 %, 2k test) | Pareto stitches | "
        "min margin of front stitches | best stitch − smaller anchor (0→1, 1→2) | "
        "widest MACs gap | mean stitch top-1 | s/epoch (1 thread) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("s*.json")):
        r = json.loads(path.read_text())
        anchors = ", ".join(
            f"{a:.2f}→{b:.2f}"
            for a, b in zip(r["anchors_standalone"], r["anchors_after"], strict=True)
        )
        best = r.get("best_stitch_margin_by_smaller_anchor")
        best = ", ".join(f"{v:+.2f}" for v in best.values()) if best else "n/a"
        margin = r["min_margin_over_smaller_anchor_in_snnet"]
        print(
            f"| {path.stem} | {r['args']['steps']} | {anchors} | {r['pareto_count_stitches']} | "
            f"{'n/a' if margin is None else f'{margin:+.2f}'} | {best} | "
            f"{r['widest_macs_gap_on_front']:.2f}× | {r['mean_stitch_top1']:.2f} | "
            f"{r['seconds_per_epoch_1thread']:.0f} |"
        )


if __name__ == "__main__":
    main()
