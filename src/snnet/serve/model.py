"""The torch backend of the server: a run's network loaded once per replica, its results and
costs, preprocessing, and the stitches it runs traced (see :class:`~snnet.serve.backend.Backend`).

This is the one serving module that imports torch.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from snnet.data.anchors import network_preprocessing
from snnet.data.config import DataConfig
from snnet.measure.latency import forget_latency, measure_latency
from snnet.measure.results import Record, Results
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.serialize import load, read_config
from snnet.serve.maps import dense_answers
from snnet.sources import from_zoo
from snnet.stitch import Stitch

logger = logging.getLogger("snnet.serve")


# -- preprocessing --------------------------------------------------------------------------------
#: PIL image -> (C, H, W) input: the network's :class:`~snnet.data.DataConfig`, the one
#: definition training, ``snnet evaluate`` and serving share (serving splits it in two:
#: ``pixels`` per image on the event loop, ``normalize`` per batch in :meth:`ServedModel.predict`).
Preprocess = DataConfig


def preprocessing(net: SNNet, config: dict[str, Any]) -> Preprocess:
    """How to turn an image into the network's input: what training recorded with the network,
    else what its anchors say (:func:`snnet.data.anchors.network_preprocessing`)."""
    return network_preprocessing(net)


def class_names(net: SNNet, config: dict[str, Any], num_classes: int) -> tuple[str, ...]:
    """Names of the classes when the dataset is known, else ``class_0``, ``class_1``, ...
    (none for depth)."""
    if num_classes == 0:
        return ()
    names = (config.get("data") or {}).get("classes")
    if names and len(names) == num_classes:
        return tuple(names)
    if from_zoo(net.anchors):
        from snnet.data.config import FASHION_MNIST_CLASSES

        return FASHION_MNIST_CLASSES
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return tuple(info.index_to_description(i) for i in range(1000))
    return tuple(f"class_{i}" for i in range(num_classes))


# -- the model --------------------------------------------------------------------------------------
class ServedModel:
    """One network loaded for serving on torch: the network in eval mode, its results
    (accuracy, cost and latency of every stitch), the Pareto front of latency against top-1,
    preprocessing and class names. It is a :class:`~snnet.serve.backend.Backend`.

    Example:
        >>> model = ServedModel.load("runs/demo")
        >>> [probs] = model.run([model.pixels(img)], model.front[-1].stitch)
    """

    def __init__(
        self,
        net: SNNet,
        results: Results,
        preprocess: Preprocess,
        classes: tuple[str, ...],
        *,
        source: str = "",
    ) -> None:
        self.net = net.eval().requires_grad_(False)  # served, never trained (and traceable)
        self.results = results
        self.preprocess = preprocess
        self.classes = classes
        self.source = source
        self.device = next(net.parameters()).device
        self.traced: dict[Stitch, Callable[[torch.Tensor], torch.Tensor]] = {}  # see trace()
        self.front: list[Record] = results.pareto("latency_ms", net.task.metric)
        if not self.front:
            raise ValueError("no stitch has both latency and top-1 measured")

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        results: str | Path | None = None,
        measure: Callable[[SNNet, Results], Results] | None = None,
        device: str | torch.device = "cpu",
    ) -> ServedModel:
        """Load the network of a run (or a saved network) onto ``device`` with its
        ``results.json``. Latency not in the results, or measured on another kind of device
        (the SLO controller predicts from it), is measured now (``measure``; default:
        :func:`measure_latency` with 20 repeats per stitch) and the log says so; accuracy must
        already be there."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        run = RunDir.find(path)
        config = read_config(run.model)
        net = load(run.model, map_location=device).eval()
        res_path = Path(results) if results else run.results
        if not res_path.is_file():
            raise FileNotFoundError(
                f"no results file at {res_path}: measure accuracy first with `snnet evaluate "
                f"{path}` (and latency with `snnet latency {path}`), or pass --results"
            )
        res = Results.load(res_path)
        res.check_network(net)
        metric = net.task.metric
        if res.missing(metric):
            raise ValueError(
                f"{res_path} lacks {metric} for {len(res.missing(metric))} stitches: run "
                f"`snnet evaluate {path}` first"
            )
        measured_on = (res.meta.get("latency") or {}).get("device")
        if measured_on is not None and torch.device(measured_on).type != device.type:
            logger.warning(
                "%s holds latency measured on %s: measuring it again on %s",
                res_path,
                measured_on,
                device,
            )
            forget_latency(res)
        if res.missing("latency_ms"):
            logger.warning(
                "%s has no latency for %d stitches: measuring it now on this machine",
                res_path,
                len(res.missing("latency_ms")),
            )
            measure = measure or (
                lambda n, r: measure_latency(n, r, repeats=20, warmup=3, settle_s=1, progress=False)
            )
            res = measure(net, res)
        num_classes = net.task.num_classes or 0  # segmentation's; depth has none
        if not net.task.dense:
            with torch.inference_mode():
                probe = torch.zeros(1, *net.anchors[0].input_size, device=device)
                num_classes = int(net(probe).shape[-1])
        return cls(
            net,
            res,
            preprocessing(net, config),
            class_names(net, config, num_classes),
            source=str(run.model),
        )

    def trace(self, stitches: Iterable[Stitch | str], *, max_batch: int) -> list[Stitch]:
        """Run ``stitches`` as TorchScript traces from now on; returns those left eager.

        Small networks spend most of a forward in Python, one module call and one operator
        dispatch at a time, and every operator called from Python gives up the GIL and must
        win it back from the event loop. A trace runs the whole batch (normalisation, the
        stitch, softmax) as one call from C++, on the same parameter tensors (switching stays a
        lookup: no weight is copied); ``benchmarks/bench_trace.py`` measures the difference.
        ``torch.jit.trace`` is deprecated (FutureWarning) but has no replacement with its
        start-up cost; a stitch whose trace fails, or disagrees with the eager forward at batch
        1 and ``max_batch``, stays eager and the log says why.
        """
        shape = self.net.anchors[0].input_size
        g = torch.Generator().manual_seed(0)
        probe = torch.randint(0, 256, (max(max_batch, 1), *shape), generator=g, dtype=torch.uint8)
        probe = probe.to(self.device)
        eager = []
        for stitch in dict.fromkeys(self.net.space.check(s) for s in stitches):
            run = self._eager(stitch)
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced = torch.jit.trace(run, probe[:1], check_trace=False)
                with torch.inference_mode():
                    for x in (probe[:1], probe):
                        torch.testing.assert_close(traced(x), run(x))
            except Exception as e:  # any failure: the eager forward is always right
                logger.warning("stitch %s stays eager: its trace failed (%s)", stitch, e)
                eager.append(stitch)
                continue
            self.traced[stitch] = traced
        return eager

    def batch_ms(self, sizes: Iterable[int], *, rounds: int = 9) -> dict[int, dict[Stitch, float]]:
        """Time of a batch of each size per front stitch, measured now, as :meth:`predict`
        runs it (traced or not): what the SLO controller predicts from. Each round times every
        stitch once and a stitch gets its median over rounds, so a change of the machine's load
        during start-up shifts all stitches alike instead of reordering them."""
        shape = self.net.anchors[0].input_size
        out = {}
        for size in dict.fromkeys(sizes):
            x = torch.zeros(size, *shape, dtype=torch.uint8, device=self.device)
            times: dict[Stitch, list[float]] = {r.stitch: [] for r in self.front}
            for _ in range(2):  # warm-up
                for s in times:
                    self.predict(x, s)
            for _ in range(rounds):
                for s in times:
                    start = time.perf_counter()
                    self.predict(x, s)  # ends on the CPU: synchronised
                    times[s].append((time.perf_counter() - start) * 1e3)
            out[size] = {s: statistics.median(ts) for s, ts in times.items()}
        return out

    def predict(self, pixels: torch.Tensor, stitch: Stitch) -> torch.Tensor:
        """Class probabilities (B, classes, on the CPU; a dense network: its (B, H, W) label
        or depth maps) of ``stitch`` on a batch of uint8 pixels (``preprocess.pixels`` of each
        image, stacked), normalised here, on the device: one elementwise pass per batch instead
        of one per image on the event loop."""
        run = self.traced.get(stitch) or self._eager(stitch)
        with torch.inference_mode():  # .to and .cpu return the tensor itself when it is there
            return run(pixels.to(self.device, non_blocking=True)).cpu()

    def _eager(self, stitch: Stitch) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 pixels -> probabilities on ``stitch``, as a plain function: tracing a function
        records the parameters it reads as references (a module would be mirrored, all 800-odd
        submodules of every anchor, far slower to trace)."""
        net, normalize, kind = self.net, self.preprocess.normalize, self.net.task.kind

        def probabilities(pixels: torch.Tensor) -> torch.Tensor:
            return net(normalize(pixels), stitch=stitch).float().softmax(dim=-1)

        def labels(pixels: torch.Tensor) -> torch.Tensor:  # (B, H, W) class indices
            return net(normalize(pixels), stitch=stitch).argmax(dim=1).to(torch.uint8)

        def depth(pixels: torch.Tensor) -> torch.Tensor:  # (B, H, W) metres
            return net(normalize(pixels), stitch=stitch).float()

        return {"segmentation": labels, "depth": depth}.get(kind, probabilities)

    # -- the Backend contract -------------------------------------------------------------------
    def check(self, stitch: Stitch | str) -> Stitch:
        return self.net.space.check(stitch)

    def describe(self, stitch: Stitch) -> str:
        return self.net.describe(stitch)

    def preprocess_json(self) -> dict[str, Any]:
        return self.preprocess.to_json()

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(C, H, W) uint8: ``preprocess.pixels``; normalised per batch in :meth:`predict`."""
        return self.preprocess.pixels(image)

    def run(self, pixels: Sequence[torch.Tensor], stitch: Stitch) -> torch.Tensor:
        """:meth:`predict` of the images stacked into one batch."""
        return self.predict(torch.stack(list(pixels)), stitch)

    def prepare(self, stitches: Iterable[Stitch], *, max_batch: int) -> list[Stitch]:
        """:meth:`trace` ``stitches``, and log how long it took."""
        start = time.perf_counter()
        eager = self.trace(stitches, max_batch=max_batch)
        logger.info(
            "traced %d stitches (TorchScript) in %.1f s; %d stay eager",
            len(self.traced),
            time.perf_counter() - start,
            len(eager),
        )
        return eager

    @staticmethod
    def set_threads(threads: int) -> None:
        """torch's intra-op threads (a setting of the calling thread)."""
        torch.set_num_threads(threads)

    def answers(self, rows: Sequence[torch.Tensor], k: int) -> list[dict[str, Any]]:
        """Each row of :meth:`run` as its answer: the ``k`` most probable classes, or a dense
        network's label or depth map as a PNG (:mod:`snnet.serve.maps`)."""
        task = self.net.task
        if task.dense:
            return dense_answers(task.kind, (r.numpy() for r in rows), self.classes)
        probs = rows if isinstance(rows, torch.Tensor) else torch.stack(list(rows))
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [
            {
                "top": [
                    {"index": i, "label": self.classes[i], "prob": v}
                    for v, i in zip(vs, ix, strict=True)
                ]
            }
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)
        ]
