"""Every stitch scored in one pass over the data, sharing the computation stitches have in common.

The reference evaluated each stitch with its own pass over the validation set: 71 passes for DeiT,
each decoding every image again. Here each batch is decoded once and every stitch runs on it, and
the stitches are arranged as a prefix tree of what they compute: all stitches that start in anchor
0 share its stem and its first blocks, ``0:5-1:6`` and ``0:5-1:7`` share anchor 0 up to block 5 and
the stitching layer's output, so each distinct prefix runs once per batch.

A run with a results path checkpoints its counts beside the results file (``NAME.progress.json``)
every few batches and when interrupted; running it again continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from snnet.data.batches import in_order, load_batches
from snnet.data.images import ImageSet
from snnet.data.sample import stratified_indices
from snnet.files import atomic_write, check_writable, read_json_config
from snnet.measure.results import Results, fingerprint
from snnet.measure.scores import Classification, Scorer, scorer_for
from snnet.network import SNNet
from snnet.parts import Part, run_parts
from snnet.peft import adapting
from snnet.stitch import Stitch

PROGRESS_FORMAT = "snnet-eval-progress"
PROGRESS_VERSION = 1

Batch = tuple[torch.Tensor, torch.Tensor]


# -- the prefix tree ------------------------------------------------------------------------------
@dataclass(eq=False)
class _Node:
    op: tuple[Part, ...]  # one part, or a run of one anchor's blocks; () at the root
    children: list[_Node] = field(default_factory=list)
    stitches: list[int] = field(default_factory=list)  # head nodes: indices of stitches ending here
    size: int = 0  # stitches in this subtree


class StitchTree:
    """Stitches arranged as a prefix tree of their computation, to run them all on one batch.

    Every distinct prefix (a stem, a run of blocks, a stitching layer on a given input) runs once.
    The tree is walked depth first, and the largest subtree of a node goes last, after the node's
    output has been dropped by every other branch, so a batch holds only a few activations at once.

    Example:
        >>> tree = StitchTree(net)                      # every stitch, or StitchTree(net, ["0", "1"])
        >>> for stitch, logits in tree.run(images):     # logits: (B, num_classes)
        ...     print(stitch, logits.argmax(-1))
        >>> tree.block_runs, tree.block_runs_per_stitch  # blocks run per batch: shared vs one by one
    """

    def __init__(self, net: SNNet, stitches: Sequence[Stitch | str] | None = None) -> None:
        self.net = net
        chosen = net.stitches if stitches is None else [net.space.check(s) for s in stitches]
        self.stitches: tuple[Stitch, ...] = tuple(dict.fromkeys(chosen))  # unique, in order
        if not self.stitches:
            raise ValueError("no stitches to run: pass at least one")
        self.root = _Node(())
        for i, s in enumerate(self.stitches):
            node = self.root
            for part in net.parts(s):  # one node per part: cuts at different blocks share a prefix
                child = next((c for c in node.children if c.op == (part,)), None)
                if child is None:
                    child = _Node((part,))
                    node.children.append(child)
                node = child
            node.stitches.append(i)
        self._finish(self.root)
        self.block_runs = self._count_blocks(self.root)
        self.block_runs_per_stitch = sum(
            sum(p.kind == "block" for p in net.parts(s)) for s in self.stitches
        )

    def _finish(self, node: _Node) -> None:
        # Merge a run of single-child block nodes of one anchor into one forward_blocks call.
        for child in node.children:
            while (
                child.op[0].kind == "block"
                and len(child.children) == 1
                and child.children[0].op[0].kind == "block"
                and child.children[0].op[0].anchor == child.op[0].anchor
            ):
                nxt = child.children[0]
                child.op = child.op + nxt.op
                child.children = nxt.children
            self._finish(child)
        node.size = len(node.stitches) + sum(c.size for c in node.children)
        node.children.sort(key=lambda c: c.size)  # the largest subtree runs last

    def _count_blocks(self, node: _Node) -> int:
        own = sum(p.kind == "block" for p in node.op)
        return own + sum(self._count_blocks(c) for c in node.children)

    def run(self, x: torch.Tensor) -> Iterator[tuple[Stitch, torch.Tensor]]:
        """Yield ``(stitch, logits)`` for every stitch of the tree on images ``x`` (B, C, H, W).

        Runs under the caller's grad mode, autocast and module mode (call ``net.eval()`` first
        for evaluation). Each logits tensor equals ``net(x, stitch=stitch)``.
        """
        # A stack of (node, input): a node's output is referenced only by its pending children,
        # and freed once the last of them (the largest subtree) has run.
        # The third item: whether a stitching layer ran before the node (the anchors' LoRA runs
        # only after one, as in run_plan).
        stack = [(c, x, False) for c in reversed(self.root.children)]
        del x
        while stack:
            node, h, after = stack.pop()
            with adapting(after):
                out = run_parts(node.op, self.net.anchors, self.net.layers, h, self.net.dense)
            del h
            for i in node.stitches:
                yield self.stitches[i], out
            after = after or any(p.kind == "layer" for p in node.op)
            stack.extend((c, out, after) for c in reversed(node.children))
            del out


# -- evaluation -----------------------------------------------------------------------------------
def evaluate_all(
    net: SNNet,
    data: Dataset | Iterable[Batch],
    *,
    stitches: Sequence[Stitch | str] | None = None,
    batch_size: int = 256,
    max_images: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool = False,
    path: str | Path | None = None,
    checkpoint_every: int = 10,
    num_workers: int | None = None,
    progress: bool = True,
    data_name: str | None = None,
) -> Results:
    """The task's metrics of every stitch (or of ``stitches``) in one pass over ``data``:
    top-1 / top-5 accuracy, mIoU and pixel accuracy for segmentation, AbsRel, RMSE and δ<1.25
    for depth (:mod:`snnet.measure.scores`).

    ``data``: an :class:`~snnet.data.ImageSet` (or any map-style dataset of ``(image, label)``),
    batched here in order, or an iterable of ``(images, targets)`` batches in a fixed order.
    ``max_images``: a seeded stratified sample of that many images (drawn with ``seed``), which
    the results record. The network runs on ``device`` (default: CUDA when available) in eval
    mode under ``torch.inference_mode()`` (``amp``: autocast, bfloat16 on CPU, float16 on
    CUDA), and gets its device and mode back afterwards.

    With ``path`` (a results JSON file) the run resumes: counts go to ``NAME.progress.json``
    every ``checkpoint_every`` batches and on Ctrl-C or error, and a rerun continues from there;
    stitches ``path`` holds already are not run again, and the results are merged into it (JSON
    + CSV). An unwritable ``path`` is an ``OSError`` before anything runs; results of another
    network, other weights, other data or another sample are a ``ValueError``. How the metrics
    were measured goes to ``meta["accuracy"]``.

    Example:
        >>> results = evaluate_all(net, fashion_mnist("test"), path="runs/demo/results.json")
        >>> quick = evaluate_all(net, fashion_mnist("test"), max_images=1000)  # 100 per class
        >>> results["0:5-1:6"].top1, results.pareto("gmacs")
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_name = data_name or _describe(data)
    data, sample = _sample(data, max_images, seed)
    path = Path(path) if path is not None else None
    results, signature = _known(net, path, data_name, sample)
    wanted = list(net.stitches) if stitches is None else [net.space.check(s) for s in stitches]
    todo = [s for s in dict.fromkeys(wanted) if getattr(results[s], results.metric) is None]
    if not todo:
        if path is not None and path.exists():
            _tidy(path, results)
        return results
    tree = StitchTree(net, todo)
    scorer = scorer_for(net.task)
    state = _load_progress(path, signature, tree.stitches, scorer)  # (images, batches, stats)
    was_training = net.training
    home = {t.device for t in [*net.parameters(), *net.buffers()]}
    net.to(device).eval()
    try:
        batches = _batches(data, state[0], batch_size, num_workers)
        total = len(data) if isinstance(data, Dataset) else None
        state = _count(
            tree, scorer, batches, state, total, device, amp, progress, path, signature,
            checkpoint_every,
        )  # fmt: skip
    finally:
        net.train(was_training)
        if len(home) == 1:
            net.to(home.pop())
    _record(results, tree, scorer, state, signature, batch_size, device, amp)
    if path is not None:
        results.save(path)
        progress_path(path).unlink(missing_ok=True)
    return results


def _record(
    results: Results,
    tree: StitchTree,
    scorer: Scorer,
    state: tuple[int, int, torch.Tensor],
    signature: dict[str, Any],
    batch_size: int,
    device: torch.device,
    amp: bool,
) -> None:
    """The pass's sums as the task's metrics, and how they were measured (``meta["accuracy"]``)."""
    images = state[0]
    if images == 0:
        raise ValueError(f"no images in {signature['data']}: nothing to evaluate")
    for s, stats in zip(tree.stitches, state[2], strict=True):
        results.update(s, **scorer.values(stats, images))
    results.meta["accuracy"] = {  # latency keeps its own entry
        **{k: signature[k] for k in ("data", "sample", "weights")},
        "images": images,
        "batch_size": batch_size,
        "device": str(device),
        "amp": amp,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _known(
    net: SNNet, path: Path | None, data: str, sample: dict[str, Any] | None
) -> tuple[Results, dict[str, Any]]:
    """What ``path`` holds already (of this network, these weights, these images; an unwritable
    ``path`` fails now, not after the whole pass), and the signature of this measurement."""
    signature = {
        "network": fingerprint(net),
        "weights": weights_digest(net),
        "data": data,
        "sample": sample,
    }
    if path is None:
        return Results.for_network(net), signature
    check_writable(path)
    if not path.exists():
        return Results.for_network(net), signature
    results = Results.load(path)
    results.check_network(net)
    _check_same_measurement(results, path, signature)
    return results, signature


def _count(
    tree: StitchTree,
    scorer: Scorer,
    batches: Iterable[Batch],
    state: tuple[int, int, torch.Tensor],
    total: int | None,
    device: torch.device,
    amp: bool,
    progress: bool,
    path: Path | None,
    signature: dict[str, Any],
    checkpoint_every: int,
) -> tuple[int, int, torch.Tensor]:
    """The pass: the scorer's sums of every stitch of ``tree``, added to ``state``; saved to the
    progress file every ``checkpoint_every`` batches and when interrupted."""
    index = {s: i for i, s in enumerate(tree.stitches)}
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=dtype, enabled=amp)
    desc = f"evaluating {len(tree.stitches)} stitches"
    bar = tqdm(total=total, initial=state[0], unit="img", desc=desc, disable=not progress)
    try:
        with torch.inference_mode(), autocast:
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = torch.as_tensor(y).to(device, non_blocking=True)
                counts = scorer.zeros(len(tree.stitches), device=device)
                for s, out in tree.run(x):
                    counts[index[s]] = scorer.batch(out, y)
                # One assignment, so an interruption never leaves a half-counted batch.
                state = (state[0] + len(y), state[1] + 1, state[2] + counts.cpu())
                bar.update(len(y))
                if path is not None and state[1] % checkpoint_every == 0:
                    _save_progress(path, signature, tree.stitches, state, scorer)
    except BaseException:
        if path is not None and state[0] > 0:
            _save_progress(path, signature, tree.stitches, state, scorer)
        raise
    finally:
        bar.close()
    return state


# -- data -----------------------------------------------------------------------------------------
def _describe(data: Any) -> str:
    if getattr(data, "name", None):
        return data.name
    parts = [str(getattr(data, "root", "") or "")]
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        parts.append(f"{len(data)} items")
    return f"{type(data).__name__}({', '.join(p for p in parts if p)})"


def _sample(data: Any, max_images: int | None, seed: int) -> tuple[Any, dict[str, Any] | None]:
    """The images to evaluate: ``data`` itself, or a seeded stratified sample of ``max_images``
    of it, and a record of which (None: all of them)."""
    if max_images is None or (isinstance(data, Dataset) and max_images >= len(data)):
        return data, None
    if not isinstance(data, Dataset):
        raise ValueError(
            "max_images samples a dataset by class: pass an ImageSet (or a dataset with "
            "targets), or cut the iterable of batches yourself"
        )
    record = {"images": max_images, "seed": seed, "kind": "stratified"}
    if isinstance(data, ImageSet):
        return data.sample(max_images, seed=seed), record
    targets = getattr(data, "targets", None)
    if targets is None:
        raise ValueError(
            f"{type(data).__name__} has no targets: max_images samples by class; pass an "
            "ImageSet, or give the dataset a targets list"
        )
    return Subset(data, stratified_indices(targets, max_images, seed=seed)), record


def _batches(
    data: Dataset | Iterable[Batch], start: int, batch_size: int, num_workers: int | None
) -> Iterator[Batch]:
    """Batches from image ``start`` on, in the data's order."""
    if isinstance(data, Dataset):
        rows = in_order(len(data) - start, batch_size, torch.arange(start, len(data)))
        yield from load_batches(data, rows, num_workers=num_workers)
        return
    seen = 0
    for x, y in data:
        n = len(y)
        if seen + n > start:
            skip = max(0, start - seen)  # resuming inside this batch
            yield (x[skip:], y[skip:]) if skip else (x, y)
        seen += n


# -- resuming -------------------------------------------------------------------------------------
def progress_path(path: str | Path) -> Path:
    """Where an unfinished evaluation writing ``path`` keeps its counts."""
    path = Path(path)
    return path.with_name(f"{path.stem}.progress.json")


def weights_digest(net: SNNet) -> str:
    """A hash of every weight and buffer of ``net``: results measured before more training
    (same anchors, other weights) are not mistaken for this network's."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tidy(path: Path, results: Results) -> None:
    """After a kill during the final save: the CSV again from the JSON, the stale progress gone."""
    results.write_csv(path)
    p = progress_path(path)
    if p.exists():
        try:
            saved = read_json_config(p, PROGRESS_FORMAT, PROGRESS_VERSION, what="progress")
            stitches = saved.get("stitches", [])
            done = all(getattr(results[s], results.metric) is not None for s in stitches)
        except (ValueError, KeyError):  # not a progress file we can judge: leave it
            done = False
        if done:
            p.unlink()


def _check_same_measurement(results: Results, path: Path, signature: dict[str, Any]) -> None:
    before = results.meta.get("accuracy") or {}
    if not any(getattr(r, results.metric) is not None for r in results):
        return
    if before.get("max_images") is not None:  # scored on the first N images, not a sample
        raise ValueError(
            f"{path} holds accuracies of the first {before['max_images']} images only: write to "
            f"another results file (--out) or delete {path}"
        )
    for key in ("weights", "data", "sample"):
        if before.get(key) != signature[key]:
            raise ValueError(
                f"{path} holds accuracies measured with other {key} ({before.get(key)} vs "
                f"{signature[key]} now): write to another results file (--out) or delete {path}"
            )


def _load_progress(
    path: Path | None, signature: dict[str, Any], stitches: Sequence[Stitch], scorer: Scorer
) -> tuple[int, int, torch.Tensor]:
    empty = (0, 0, scorer.zeros(len(stitches)))
    if path is None or not progress_path(path).exists():
        return empty
    p = progress_path(path)
    saved = read_json_config(
        p,
        PROGRESS_FORMAT,
        PROGRESS_VERSION,
        what="an snnet evaluation progress file",
        fix="move it away or delete it to start the evaluation over",
    )
    for key in ("network", "weights", "data", "sample"):
        if saved.get(key) != signature[key]:
            raise ValueError(
                f"{p} holds an unfinished evaluation with a different {key} ({saved.get(key)} "
                f"vs {signature[key]} now): rerun it with the same network and data, or delete "
                "it to start over"
            )
    if saved.get("stitches") != [str(s) for s in stitches]:
        raise ValueError(
            f"{p} holds an unfinished evaluation of other stitches ({len(saved.get('stitches', []))} "
            f"vs {len(stitches)} now): rerun with the same stitches, or delete it to start over"
        )
    if "stats" in saved:  # a dense task's sums
        counts = torch.tensor(saved["stats"], dtype=scorer.dtype)
    else:
        counts = torch.tensor([saved["correct1"], saved["correct5"]], dtype=torch.long).T
    return saved["images"], saved["batches"], counts.reshape(len(stitches), *scorer.shape)


def _save_progress(
    path: Path,
    signature: dict[str, Any],
    stitches: Sequence[Stitch],
    state: tuple[int, int, torch.Tensor],
    scorer: Scorer,
) -> None:
    images, batches, counts = state
    if isinstance(scorer, Classification):
        sums = {"correct1": counts[:, 0].tolist(), "correct5": counts[:, 1].tolist()}
    else:
        sums = {"stats": counts.tolist()}
    doc = {
        "format": PROGRESS_FORMAT,
        "version": PROGRESS_VERSION,
        **signature,
        "stitches": [str(s) for s in stitches],
        "images": images,
        "batches": batches,
        **sums,
    }
    atomic_write(progress_path(path), lambda f: json.dump(doc, f, indent=2, sort_keys=True))
