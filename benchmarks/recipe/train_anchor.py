"""Train a candidate demo anchor (not shipped) the way ``snnet zoo train`` trains the shipped
ones, into a folder of its own (FINDINGS.md, section F): 1 thread, the zoo's recipe.

    python benchmarks/recipe/train_anchor.py t_d4w16 --weights /tmp/fam/weights
"""

import argparse
import json
from pathlib import Path

import snnet.zoo as zoo
from snnet.threads import set_threads
from snnet.train.zoo_recipe import train_demo_anchor
from snnet.zoo import DemoAnchorConfig

# shallower and narrower than the shipped depth-12 anchors
CANDIDATES = {
    "t_d4w16": DemoAnchorConfig(embed_dim=16, num_heads=1, depth=4),
    "t_d6w24": DemoAnchorConfig(embed_dim=24, num_heads=2, depth=6),
    "t_d8w32": DemoAnchorConfig(embed_dim=32, num_heads=2, depth=8),
}


def link_shipped(weights: Path) -> None:
    """Make the shipped anchors loadable from ``weights`` too."""
    weights.mkdir(parents=True, exist_ok=True)
    for f in zoo.WEIGHTS_DIR.glob("fmnist_vit_*"):
        if not (weights / f.name).exists():
            (weights / f.name).symlink_to(f)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("name", choices=sorted(CANDIDATES))
    p.add_argument("--weights", type=Path, required=True)
    args = p.parse_args()
    set_threads(1)
    zoo.ZOO_ANCHORS.update(CANDIDATES)
    r = train_demo_anchor(args.name, out_dir=args.weights, progress=False)
    print(json.dumps({k: r[k] for k in ("name", "test_acc", "gmacs", "train_seconds")}))
