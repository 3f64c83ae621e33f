"""Screen a candidate demo family with the demo recipe, one seed (FINDINGS.md, section F).

The demo always trains the ``fmnist`` preset; this script points that preset (and the demo
family's records) at other zoo anchors for one run, and writes what ``bench_demo_family.py``
records for a seed. Anchors not shipped are trained first with ``train_anchor.py`` into
``--weights`` (the shipped ones are linked there).

    python benchmarks/recipe/train_anchor.py t_d4w16 --weights /tmp/fam/weights
    python benchmarks/recipe/screen_family.py t_d4w16,t_d8w32,fmnist_vit_l 0 \
        --weights /tmp/fam/weights --out /tmp/fam
"""

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench_demo_family

from train_anchor import CANDIDATES, link_shipped  # noqa: E402

import snnet.presets as presets  # noqa: E402
import snnet.zoo as zoo  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("names", help="anchors, cheapest first, comma-separated")
p.add_argument("seed", type=int)
p.add_argument("--epochs", type=int, default=None, help="default: the demo's")
p.add_argument("--weights", type=Path, required=True)
p.add_argument("--out", type=Path, required=True)
args = p.parse_args()

names = args.names.split(",")
zoo.ZOO_ANCHORS.update(CANDIDATES)
link_shipped(args.weights)
zoo.WEIGHTS_DIR = args.weights
presets.PRESETS["fmnist"] = (tuple(f"zoo={n}" for n in names), {})
zoo.DEMO_FAMILY.clear()
zoo.DEMO_FAMILY.update({n: zoo.ZOO_ANCHORS[n] for n in names})

import bench_demo_family as bench  # noqa: E402

tag = "-".join(n.split("_")[-1] for n in names) + f"-s{args.seed}-e{args.epochs}"
start = time.time()
r = bench.one_seed(args.seed, args.out / "runs" / tag, 1, None, False, args.epochs)
r["tag"] = tag
args.out.mkdir(parents=True, exist_ok=True)
(args.out / f"{tag}.json").write_text(json.dumps(r, indent=1))
f = r["pareto"]
print(tag, r["anchors"], "front", f["stitches_on_front"], "min margin", f["min_front_margin"])
print("gap", f["widest_gmacs_gap"].get("ratio"), "goals", r["goals_met"])
print("best margin per pair", {k: v["best_margin"] for k, v in r["pairs"].items()})
print("wall", round(time.time() - start), "s")
for row in f["front"]:
    print("  ", row)
