"""The ONNX Runtime backend of the server: an exported front served without torch.

An exported front (``snnet export RUN --front --format onnx``) is one ONNX file, ``model.onnx``,
whose inputs are uint8 pixels (N, C, H, W; the graph normalises them) and a stitch index, with
every front stitch inside, and a ``config.json`` beside it (``"format": "snnet-front"``) listing
the stitches in index order with their costs and accuracy, and the preprocessing with the class
names. :class:`OrtBackend` serves it through the :class:`~snnet.serve.backend.Backend` contract
with numpy and PIL: resize and crop per image (:mod:`snnet.data.geometry`), softmax and top-k in
numpy, or a dense front's label or depth maps as PNGs (:mod:`snnet.serve.maps`). Nothing here
imports torch, so the serving process holds the runtime, the web stack and the weights only.

The batch times the SLO controller predicts from are measured on the first start on a device
and kept beside the artifact (:mod:`snnet.serve.timings`); later starts read them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from snnet.artifact import read_front_config
from snnet.data.config import DataConfig
from snnet.data.geometry import pixels_array
from snnet.files import CONFIG, HASHES, ONNX, unit_file
from snnet.measure.results import Record, Results
from snnet.serve import timings
from snnet.serve.maps import dense_answers
from snnet.stitch import Stitch
from snnet.task import Task

logger = logging.getLogger("snnet.serve")


def _records(stitches: list[dict[str, Any]]) -> list[Record]:
    """The config's stitches as records, in index order (unknown keys, like ``index``, left)."""
    known = {f.name for f in fields(Record)}
    rows = sorted(stitches, key=lambda d: d.get("index", 0)) if stitches else []
    out = []
    for i, d in enumerate(rows):
        if d.get("index", i) != i:
            raise ValueError(f"the front's stitch indices must run 0..{len(rows) - 1}")
        out.append(Record.from_json({k: v for k, v in d.items() if k in known}))
    return out


class OrtBackend:
    """An exported front on ONNX Runtime's CPU provider, as a
    :class:`~snnet.serve.backend.Backend`.

    Example:
        >>> backend = OrtBackend.load("deploy/front")
        >>> [probs] = backend.run([backend.pixels(img)], backend.front[-1].stitch)
    """

    def __init__(self, directory: Path, config: dict[str, Any], *, threads: int = 1) -> None:
        self.directory = directory
        self.source = str(directory)
        self.preprocess = DataConfig.from_json(config["data"])
        records = _records(config.get("stitches") or [])
        if not records:
            raise ValueError(f"{directory / CONFIG} lists no stitches")
        self.index = {r.stitch: i for i, r in enumerate(records)}
        self.task = Task.from_json(config.get("task"))  # absent: classification
        try:  # checked against the sha256 its config records: a changed file is never loaded
            self.model_path = unit_file(directory, config, ONNX)
        except FileNotFoundError as e:
            raise ValueError(f"{e}: serving a front needs its --format onnx export") from None
        # the artifact the batch times belong to: a new export in the same place measures anew
        self.digest = config[HASHES][ONNX]
        self.threads = threads
        self.session = self._session(threads)
        self._inputs()
        classes = config.get("classes") or self.preprocess.classes
        n = self._num_classes()
        self.classes = tuple(classes) if classes and len(classes) == n else _numbered(n)
        network = {"task": self.task.to_json()}  # what Results.metric ranks by
        self.results = Results(records, network=network, meta={"source": self.source})
        latency = self.batch_ms((1,))[1]
        for s, ms in latency.items():
            self.results.update(s, latency_ms=ms)
        self.front: list[Record] = self.results.pareto("latency_ms")
        if not self.front:
            raise ValueError(f"{directory / CONFIG}: no stitch has a {self.results.metric}")

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1) -> OrtBackend:
        """The exported front in directory ``path``; its stitches' batch-1 times are read from
        ``latency.json`` beside it, or measured now and kept there."""
        directory = Path(path)
        return cls(directory, read_front_config(directory), threads=threads)

    # -- the session -----------------------------------------------------------------------------
    def _session(self, threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle threads sleep instead of spinning: the event loop shares these cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(
            str(self.model_path),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
            # Constant folding computes each branch's expressions of the shared weights into
            # constants of their own: a copy of every weight per stitch (about 10x the file's
            # bytes in memory for a front whose branches scale their weights by one)
            disabled_optimizers=["ConstantFolding"],
        )

    def _inputs(self) -> None:
        """Which input takes the uint8 pixels (rank 4) and which the stitch index."""
        inputs = self.session.get_inputs()
        images = [i for i in inputs if len(i.shape) == 4 and i.type == "tensor(uint8)"]
        index = [i for i in inputs if i.type == "tensor(int64)" and len(i.shape) <= 1]
        if len(images) != 1 or len(index) != 1:
            raise ValueError(
                f"{self.model_path}: expected uint8 pixels (N, C, H, W) and an int64 stitch "
                f"index as inputs, got {[(i.name, i.type, i.shape) for i in inputs]}"
            )
        self._images, self._stitch = images[0].name, index[0].name
        self._index_shape = tuple(1 for _ in index[0].shape)
        self._output = self.session.get_outputs()[0].name

    def _num_classes(self) -> int:
        """The logits' width (a segmentation front: their channels; depth: none): from the
        graph's output shape, else from one run."""
        if self.task.kind == "depth":
            return 0
        axis = 1 if self.task.dense else -1
        width = self.session.get_outputs()[0].shape[axis]
        if isinstance(width, int):
            return width
        x = np.zeros((1, *self.preprocess.input_size), np.uint8)
        return int(self._logits(x, next(iter(self.index))).shape[axis])

    def _logits(self, pixels: np.ndarray, stitch: Stitch) -> np.ndarray:
        """The graph's output for uint8 ``pixels`` (B, C, H, W; the graph normalises them):
        (B, classes) logits, a segmentation front's (B, classes, H, W), depth's (B, H, W)."""
        index = np.full(self._index_shape, self.index[stitch], np.int64)
        return self.session.run([self._output], {self._images: pixels, self._stitch: index})[0]

    # -- the Backend contract --------------------------------------------------------------------
    def check(self, stitch: Stitch | str) -> Stitch:
        s = Stitch.parse(stitch) if isinstance(stitch, str) else stitch
        if s not in self.index:
            names = ", ".join(str(x) for x in self.index)
            raise ValueError(f"the exported front holds the stitches {names}; not {s}")
        return s

    def describe(self, stitch: Stitch) -> str:
        return f"stitch {stitch} (index {self.index[stitch]} of the exported front)"

    def preprocess_json(self) -> dict[str, Any]:
        return self.preprocess.to_json()

    def pixels(self, image: Image.Image) -> np.ndarray:
        """(C, H, W) uint8: resized and cropped, normalised per batch in :meth:`run`."""
        return pixels_array(image, self.preprocess)

    def run(self, pixels: Sequence[np.ndarray], stitch: Stitch) -> np.ndarray:
        """Class probabilities (B, classes) of ``stitch``: the front run at its index on the
        batch of uint8 pixels (normalised inside the graph), softmax; a dense front's (B, H, W)
        label maps (uint8) or depth maps (metres)."""
        logits = self._logits(np.stack(list(pixels)), stitch).astype(np.float32)
        if self.task.kind == "segmentation":
            return logits.argmax(axis=1).astype(np.uint8)
        if self.task.kind == "depth":
            return logits
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def answers(self, rows: Sequence[np.ndarray], k: int) -> list[dict[str, Any]]:
        """The ``k`` most probable classes of each row of :meth:`run`, or a dense front's map
        as a PNG."""
        if self.task.dense:
            return dense_answers(self.task.kind, rows, self.classes)
        p = np.asarray(rows if isinstance(rows, np.ndarray) else np.stack(list(rows)))
        k = min(k, p.shape[-1])
        order = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        return [
            {"top": [{"index": int(i), "label": self.classes[i], "prob": float(r[i])} for i in ix]}
            for r, ix in zip(p, order, strict=True)
        ]

    def prepare(self, stitches: Iterable[Stitch], *, max_batch: int) -> list[Stitch]:
        """Nothing to do: ONNX Runtime's first run of a stitch and batch size costs about what
        later runs cost (no tracing, no compilation), so start-up warms nothing up."""
        return []

    def batch_ms(self, sizes: Iterable[int]) -> dict[int, dict[Stitch, float]]:
        """Batch times of every stitch at ``sizes``: kept beside the artifact for this device
        (:func:`~snnet.serve.timings.kept`), measured now where missing."""
        on = {**timings.device("onnxruntime", ort.__version__, self.threads), "of": self.digest}
        shape = self.preprocess.input_size

        def run(stitch: Stitch, n: int) -> None:
            self._logits(np.zeros((n, *shape), np.uint8), stitch)

        return timings.kept(self.directory / timings.FILE, on, self.index, sizes, run)

    def set_threads(self, threads: int) -> None:
        """Intra-op threads of the runtime (a session setting: a new session if it changes)."""
        if threads != self.threads:
            self.threads = threads
            self.session = self._session(threads)


def _numbered(n: int) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(n))
