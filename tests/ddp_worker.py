"""Run by test_train.py under ``torchrun --nproc_per_node=2 --standalone`` (gloo, 1 thread each).

1. One DDP step where the ranks run different stitches: each parameter's gradient must be the
   mean over the ranks whose stitch ran it, and ``None`` where no rank ran it.
2. A few training steps per rank-sampling mode; each rank saves its final weights and stitches.
3. The same in PEFT mode (frozen anchors, LoRA, low-rank stitching layers), as ``peft``.
Writes ``OUT/grad-rank{r}.json``, ``OUT/{mode}-rank{r}.pt`` and ``OUT/{mode}-rank{r}.json``.
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
from snnet.data import EpochBatches  # noqa: E402
from snnet.train import (  # noqa: E402
    TrainConfig,
    distributed,
    train_loop,
)


class Tensors(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)  # the same data on every rank
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def get_batch(self, idx):
        return self.images[idx], self.labels[idx]


out = Path(sys.argv[1])
world = distributed.setup("cpu")
rank = world.rank
data = Tensors(64)

# 1. Gradients of one step with a different stitch per rank.
net = snnet.SNNet(vit_family())
reference = copy.deepcopy(net)
cross = next(s for s in net.stitches if s.route == (0, 1) and s.cuts[0].out_block == 1)
stitches = [snnet.Stitch.anchor(0), cross]  # share anchor 0's stem and blocks 0-1; anchor 2 idle
batches = [data.get_batch(torch.arange(8 * r, 8 * r + 8)) for r in range(2)]
model = distributed.wrap(net, world)
x, y = batches[rank]
F.cross_entropy(model(x, stitch=stitches[rank]), y).backward()
distributed.average_over_users(net, stitches)

per_rank = []
for r in range(2):
    reference.zero_grad(set_to_none=True)
    x, y = batches[r]
    F.cross_entropy(reference(x, stitch=stitches[r]), y).backward()
    per_rank.append(
        {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
    )
errors, mismatched_none, shared = [], [], 0
for n, p in net.named_parameters():
    users = [g[n] for g in per_rank if n in g]
    if not users:
        if p.grad is not None:
            mismatched_none.append(n)
        continue
    shared += len(users) == 2
    if p.grad is None:
        mismatched_none.append(n)
        continue
    errors.append(float((p.grad - torch.stack(users).mean(0)).abs().max()))
(out / f"grad-rank{rank}.json").write_text(
    json.dumps(
        {
            "max_error": max(errors),
            "checked": len(errors),
            "shared": shared,
            "none_mismatch": mismatched_none,
            "idle_none": [n for n, p in net.named_parameters() if p.grad is None],
        }
    )
)
del model

# 2. A few steps per mode; every rank must end with the same weights.
for mode in ("independent", "balanced", "same"):
    net = snnet.SNNet(vit_family())
    config = TrainConfig(
        epochs=1, steps=4, batch_size=8, lr=1e-2, anchor_lr_scale=1.0, warmup=0, rank_sampling=mode
    )
    batches = EpochBatches(data, 8, rank=rank, world_size=world.world_size)
    result = train_loop(net, batches, config, run_dir=out / mode, progress=False)
    torch.save(net.state_dict(), out / f"{mode}-rank{rank}.pt")
    (out / f"{mode}-rank{rank}.json").write_text(json.dumps({"stitches": result.stitches}))

# 3. PEFT: frozen anchors with a shared LoRA, low-rank stitching layers, a stitch per rank.
net = snnet.SNNet(vit_family(), lora_rank=2, stitch_rank=2)
config = TrainConfig(
    epochs=1, steps=4, batch_size=8, lr=1e-2, warmup=0, rank_sampling="independent"
)
batches = EpochBatches(data, 8, rank=rank, world_size=world.world_size)
result = train_loop(net, batches, config, run_dir=out / "peft", progress=False)
torch.save(net.state_dict(), out / f"peft-rank{rank}.pt")
(out / f"peft-rank{rank}.json").write_text(json.dumps({"stitches": result.stitches}))

torch.distributed.destroy_process_group()
