"""The user's own family: any ``stem``, list of ``blocks`` and ``head`` modules."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from snnet.adapters.base import Anchor, Layout, Stage, consecutive_stages


class _Parts(nn.Module):
    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head


class SequentialAnchor(Anchor):
    """An anchor built from parts the user already has.

    ``stages`` lists the number of blocks per stage (default: one stage holding every block);
    ``layout`` is the feature layout, one for all stages or one per stage.

    Example:
        >>> anchor = SequentialAnchor(stem, blocks, head, input_size=(3, 32, 32), layout="nchw",
        ...                           stages=[2, 2])
    """

    family = "sequential"
    stem_names = ("stem",)
    head_names = ("head",)

    def __init__(
        self,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        *,
        input_size: tuple[int, int, int],
        layout: Layout | Sequence[Layout] = "tokens",
        stages: Sequence[int] | None = None,
        stitch_stages: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        depths = list(stages) if stages is not None else [len(blocks)]
        if sum(depths) != len(blocks) or any(d < 1 for d in depths):
            raise ValueError(
                f"stage depths {depths} must be positive and add up to {len(blocks)} blocks"
            )
        layouts = [layout] * len(depths) if isinstance(layout, str) else list(layout)
        if len(layouts) != len(depths):
            raise ValueError(
                f"give one layout, or one per stage ({len(depths)}), not {len(layouts)}"
            )
        bad = [v for v in layouts if v not in ("tokens", "nchw", "nhwc")]
        if bad:
            raise ValueError(f"unknown layout {bad[0]!r}: use 'tokens', 'nchw' or 'nhwc'")
        chosen = set(range(len(depths)) if stitch_stages is None else stitch_stages)
        self._stages = consecutive_stages(depths, layouts, chosen)
        super().__init__(
            _Parts(stem, blocks, head), name=name or "sequential", input_size=input_size
        )

    def block_names(self) -> list[tuple[str, ...]]:
        return [(f"blocks.{i}",) for i in range(len(self.model.blocks))]

    def stages(self) -> tuple[Stage, ...]:
        return self._stages
