"""snnet: Stitchable Neural Networks for any family of pretrained models.

Example:
    >>> import snnet
    >>> anchors, options = snnet.resolve_anchors("deit", pretrained=True)
    >>> net = snnet.SNNet(anchors, **options)                   # 71 stitches
    >>> images, _ = next(iter(train_loader))                    # (N, 3, 224, 224)
    >>> snnet.init_least_squares(net, images)
    >>> net.stitch = "0:5-1:6"
"""

from __future__ import annotations

import importlib
from typing import Any

from snnet.lazy import lazy_exports

#: Module -> the public names it defines. They are imported on first use (PEP 562), so that
#: ``import snnet`` and ``snnet --help`` do not load torch.
_PUBLIC = {
    "snnet.adapters": (
        "Anchor",
        "FeatureShape",
        "LevitAnchor",
        "ResNetAnchor",
        "SequentialAnchor",
        "Stage",
        "SwinAnchor",
        "ViTAnchor",
        "as_anchor",
        "register_adapter",
    ),
    "snnet.presets": ("PRESETS",),
    "snnet.sources": ("resolve_anchors", "timm_anchor"),
    "snnet.batchnorm": ("batchnorm_stats", "recalibrate_batchnorm"),
    "snnet.control": ("BudgetController", "SloController", "SloPolicy"),
    "snnet.cost": ("Cost",),
    "snnet.export": ("StitchedModel", "export_stitch", "load_stitch", "save_stitch"),
    "snnet.measure.evaluate": ("evaluate_all",),
    "snnet.measure.latency": ("Timing", "measure_latency", "time_callable", "time_module"),
    "snnet.lstsq": ("init_least_squares",),
    "snnet.network": ("SNNet",),
    "snnet.parts": ("Part", "Step"),
    "snnet.measure.pareto": ("pareto_front",),
    "snnet.measure.results": ("Record", "Results"),
    "snnet.measure.select": ("select",),
    "snnet.train": ("TrainConfig", "fit", "train_loop"),
    "snnet.train.bands": ("flops_groups",),
    "snnet.train.sampling": ("sample_grouped", "sample_stitch"),
    "snnet.serialize": ("load", "save"),
    "snnet.space": ("SpaceConfig", "StitchSpace"),
    "snnet.stitch": ("Cut", "Stitch"),
}
__all__, _exported, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        return _exported(name)
    try:  # a submodule: snnet.data, snnet.zoo, ...
        value = importlib.import_module(f"snnet.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"snnet.{name}":
            raise
        raise AttributeError(f"module 'snnet' has no attribute {name!r}") from None
    globals()[name] = value
    return value
