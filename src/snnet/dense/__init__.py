"""Dense prediction on stitched backbones: the feature levels a stitch hands a dense head
(:mod:`~snnet.dense.levels`), the decoders (:mod:`~snnet.dense.decoders`) and the head shared by
every stitch (:mod:`~snnet.dense.head`)."""

from __future__ import annotations

from snnet.dense.decoders import FpnDecoder, NaiveDecoder
from snnet.dense.head import DenseHead
from snnet.dense.levels import dense_parts, level_blocks

__all__ = ["DenseHead", "FpnDecoder", "NaiveDecoder", "dense_parts", "level_blocks"]
