"""snnet: Stitchable Neural Networks for any family of pretrained models."""

from snnet.stitch import Cut, Stitch

__all__ = ["Cut", "Stitch"]
__version__ = "0.1.0"
