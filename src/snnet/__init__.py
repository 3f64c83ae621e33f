"""snnet: Stitchable Neural Networks for any family of pretrained models.

Example:
    >>> import snnet
    >>> anchors, options = snnet.resolve_anchors("deit", pretrained=True)
    >>> net = snnet.SNNet(anchors, **options)                   # 71 stitches
    >>> snnet.init_least_squares(net, calibration_images)
    >>> net.stitch = "0:5-1:6"
"""

from snnet.adapters import (
    Anchor,
    FeatureShape,
    LevitAnchor,
    ResNetAnchor,
    SequentialAnchor,
    Stage,
    SwinAnchor,
    ViTAnchor,
    as_anchor,
    register_adapter,
)
from snnet.anchors import PRESETS, resolve_anchors, timm_anchor
from snnet.batchnorm import batchnorm_stats, recalibrate_batchnorm
from snnet.controller import BudgetController
from snnet.cost import Cost
from snnet.export import StitchedModel, export_stitch, load_stitch, save_stitch
from snnet.latency import Timing, measure_latency, time_callable, time_module
from snnet.lstsq import init_least_squares
from snnet.network import SNNet
from snnet.pareto import pareto_front
from snnet.parts import Part, Step
from snnet.results import Record, Results
from snnet.sampling import flops_groups, sample_grouped, sample_stitch
from snnet.serialize import load, save
from snnet.space import SpaceConfig, StitchSpace
from snnet.stitch import Cut, Stitch

__all__ = [
    "PRESETS",
    "Anchor",
    "BudgetController",
    "Cost",
    "Cut",
    "FeatureShape",
    "LevitAnchor",
    "Part",
    "Record",
    "ResNetAnchor",
    "Results",
    "SNNet",
    "SequentialAnchor",
    "SpaceConfig",
    "Stage",
    "Step",
    "Stitch",
    "StitchSpace",
    "StitchedModel",
    "SwinAnchor",
    "Timing",
    "ViTAnchor",
    "as_anchor",
    "batchnorm_stats",
    "export_stitch",
    "flops_groups",
    "init_least_squares",
    "load",
    "load_stitch",
    "measure_latency",
    "pareto_front",
    "recalibrate_batchnorm",
    "register_adapter",
    "resolve_anchors",
    "sample_grouped",
    "sample_stitch",
    "save",
    "save_stitch",
    "time_callable",
    "time_module",
    "timm_anchor",
]
__version__ = "0.1.0"
