"""Run by test_contract.py under ``torchrun --nproc_per_node=2 --standalone`` (gloo, 1 thread each).

One DDP step on a two-way network where rank 0 runs a large→small→large route and rank 1 a
small→large→small one (they share anchor 0's and 1's parts and some stitching layers): each
gradient must be the mean over the ranks whose route ran it, ``None`` where none did. Writes
``OUT/routes-rank{r}.json``.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import snnet  # noqa: E402
from families import vit_family  # noqa: E402
from snnet.train import distributed  # noqa: E402

out = Path(sys.argv[1])
world = distributed.setup("cpu")
net = snnet.SNNet(vit_family(), directions="both")
reference = copy.deepcopy(net)
stitches = [snnet.Stitch.parse("1:0-0:1:2-1:3"), snnet.Stitch.parse("0:2-1:3:3-0:3")]
g = torch.Generator().manual_seed(0)
batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
batches.append((torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)))
model = distributed.wrap(net, world)
x, y = batches[world.rank]
F.cross_entropy(model(x, stitch=stitches[world.rank]), y).backward()
distributed.average_over_users(net, stitches)

per_rank = []
for r in range(2):
    reference.zero_grad(set_to_none=True)
    F.cross_entropy(reference(batches[r][0], stitch=stitches[r]), batches[r][1]).backward()
    per_rank.append(
        {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
    )
errors, mismatched_none, shared = [], [], []
for n, p in net.named_parameters():
    users = [grads[n] for grads in per_rank if n in grads]
    if (p.grad is None) != (not users):
        mismatched_none.append(n)
        continue
    if users:
        shared += [n] if len(users) == 2 else []
        errors.append(float((p.grad - torch.stack(users).mean(0)).abs().max()))
(out / f"routes-rank{world.rank}.json").write_text(
    json.dumps(
        {
            "max_error": max(errors),
            "checked": len(errors),
            "shared": shared,
            "none_mismatch": mismatched_none,
            "grad_sum": float(
                sum(p.grad.double().sum() for p in net.parameters() if p.grad is not None)
            ),
        }
    )
)
