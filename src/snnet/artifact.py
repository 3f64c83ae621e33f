"""The front artifact's format as plain data: what ``snnet export --front`` writes and what a
server reads, without torch.

A front directory holds ``config.json`` (``format: "snnet-front"``) and the files of the formats
exported (``model.onnx``, ``model.pt2``, ``model.safetensors``), written as one unit
(:func:`snnet.files.save_unit`: the config records each file's sha256). The config's keys:

- ``stitches``: one row per stitch, cheapest first; a row's position is its ``index``, the value
  of the graphs' ``stitch`` input. A row holds the results fields (``stitch``, ``gmacs``,
  ``params``, ``top1``, ``top5``, ``latency_ms``, ``latency_p90_ms``: ``null`` where not
  measured), ``macs`` and ``path`` (what the stitch runs, in words).
- ``data``: the preprocessing (:class:`snnet.data.config.DataConfig` as JSON: size, resize and
  crop, ``mean``/``std``, class names).
- ``task``: what the stitches predict (:class:`snnet.task.Task` as JSON): classification
  (``logits``, N × classes), semantic segmentation (``logits``, N × classes × H × W) or depth
  (``depth``, N × H × W, metres). The stitches are ranked by the task's metric (``top1``,
  ``miou`` or ``absrel``).
- ``inputs`` / ``outputs``: the graphs' inputs and output: name, element type, shape
  (``"batch"``: any size).
- ``measured``: how the results were measured (``accuracy``: data, images; ``latency``: device,
  threads), as the run's results file records it.
- ``network``: the smaller SN-Net that holds the stitches (what ``model.safetensors`` fills and
  ``snnet.load`` rebuilds).
- ``checked``: per graph format, the largest absolute difference of each stitch's output from
  the SN-Net's own, measured at export.
- ``sha256``: the unit's files.

The ONNX file carries ``format``, ``version``, ``stitches``, ``data``, ``task``, ``inputs`` and
``outputs`` in its metadata too, under ``snnet.<key>``, each value as JSON text, so the file
alone says what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snnet.files import CONFIG, HASHES, read_json_config

FORMAT = "snnet-front"
VERSION = 1
#: The graphs' inputs and output: uint8 images (N, C, H, W), the stitch's index, the logits
#: (classes, or classes per pixel) or a depth network's ``depth`` (metres per pixel).
PIXELS, STITCH, LOGITS, DEPTH = "pixels", "stitch", "logits", "depth"
#: The config keys the ONNX metadata repeats (as ``snnet.<key>``, values as JSON text).
METADATA_KEYS = ("format", "version", "stitches", "data", "task", "inputs", "outputs")
KEYS = {*METADATA_KEYS, "measured", "network", "checked", HASHES}


def io_spec(
    input_size: tuple[int, int, int], output: str, output_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The ``inputs`` and ``outputs`` of a front's graphs for images of ``input_size`` whose
    ``output`` (:data:`LOGITS` or :data:`DEPTH`) has ``output_shape`` (one image's)."""
    return {
        "inputs": [
            {"name": PIXELS, "dtype": "uint8", "shape": ["batch", *input_size]},
            {"name": STITCH, "dtype": "int64", "shape": []},
        ],
        "outputs": [{"name": output, "dtype": "float32", "shape": ["batch", *output_shape]}],
    }


def metadata(config: dict[str, Any]) -> dict[str, str]:
    """The ONNX metadata of a front with ``config``: ``snnet.<key>`` -> JSON text."""
    return {f"snnet.{k}": json.dumps(config[k], sort_keys=True) for k in METADATA_KEYS}


def read_front_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the front exported into ``directory``, checked to be one (of this
    version or older, with no unknown keys). Reads JSON only: no torch.

    Example:
        >>> config = read_front_config("deploy/front")
        >>> [row["stitch"] for row in config["stitches"]]
        ['0', '0:5-1:6', '2']
    """
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {directory} a directory written by snnet export --front?"
        )
    config = read_json_config(
        path,
        FORMAT,
        VERSION,
        what="an exported front",
        hints={
            "snnet-stitch": " (one exported stitch: load it with snnet.load_stitch)",
            "snnet": " (a whole SN-Net: load it with snnet.load)",
        },
    )
    unknown = set(config) - KEYS
    if unknown:
        raise ValueError(
            f"{path} has unknown keys {sorted(unknown)}; was it written by a newer snnet?"
        )
    return config
