"""Family presets: a short name for a family of timm models, small to large.

Plain data without torch, so the command line can list the names without loading it; anchors are
built from them by :func:`snnet.sources.resolve_anchors`.
"""

from __future__ import annotations

from typing import Any

#: Family presets: short name -> (timm names small to large, stitching options).
PRESETS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "deit": (("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"), {}),
    "swin": (
        (
            "swin_tiny_patch4_window7_224",
            "swin_small_patch4_window7_224",
            "swin_base_patch4_window7_224",
        ),
        {},
    ),
    "resnet": (("resnet18", "resnet50"), {}),
    "resnet-swin": (("resnet18", "swin_tiny_patch4_window7_224"), {}),
    "levit": (("levit_192", "levit_256"), {}),
    # snnet's shipped Fashion-MNIST ViTs (snnet.zoo), offline: 1×28×28 inputs, 10 classes. The
    # demo family (zoo.DEMO_FAMILY) is read from here: widths 8 / 16 / 32.
    "fmnist": (("zoo=fmnist_vit_xs", "zoo=fmnist_vit_s", "zoo=fmnist_vit_m"), {}),
    # Widths 8 / 24 / 64: the family the serving, SN-Netv2 and thread benchmarks run.
    "fmnist-xs-sm-l": (("zoo=fmnist_vit_xs", "zoo=fmnist_vit_sm", "zoo=fmnist_vit_l"), {}),
}
