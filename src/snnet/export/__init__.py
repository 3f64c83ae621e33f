"""One stitch as a standalone model: only the weights it runs, saved, reloaded and exported.

:func:`export_stitch` builds a :class:`StitchedModel` that computes exactly what
``net(x, stitch=...)`` computes while holding only that stitch's weights
(:mod:`~snnet.export.stitched`); :func:`save_stitch` / :func:`load_stitch` and :func:`export` write
and read it as one unit of files without unpickling (:mod:`~snnet.export.serialize`);
:func:`export_onnx` and :func:`export_pt2` write deployable graphs (:mod:`~snnet.export.graphs`).
"""

from snnet.export.graphs import check_onnx, export_onnx, export_pt2, require
from snnet.export.serialize import FILES, export, load_stitch, read_stitch_config, save_stitch
from snnet.export.stitched import StitchedModel, export_stitch

__all__ = [
    "FILES",
    "StitchedModel",
    "check_onnx",
    "export",
    "export_onnx",
    "export_pt2",
    "export_stitch",
    "load_stitch",
    "read_stitch_config",
    "require",
    "save_stitch",
]
