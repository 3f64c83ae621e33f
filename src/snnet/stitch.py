"""A stitch: one complete network inside an SN-Net, as a plain value.

A stitch is a *route* through the anchors plus the *cut* taken at each hop. Anchor indices follow
the order the anchors were given (small to large); block indices count the anchor's blocks from 0
across all of its stages.

String form (shell-safe, stable, used by the CLI and in results files)::

    "1"            anchor 1 on its own
    "0:3-1:4"      anchor 0 runs blocks 0..3, its output enters anchor 1 at block 4
    "1:3-0:4"      large→small: anchor 1 runs blocks 0..3, then anchor 0 from block 4
    "0:3-1:4:7-2:8"  ... anchor 1 runs blocks 4..7, then anchor 2 from block 8 to its head
    "1:3-0:4:7-1:8"  a route back: anchor 1, anchor 0 (blocks 4..7), anchor 1 again from block 8

Which routes a network holds is the stitching space's business (:mod:`snnet.space`); a stitch
is any route, so the same value, string and JSON serve small→large, large→small and returning
routes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_SEGMENT = re.compile(r"^\d+(:\d+){0,2}$")


@dataclass(frozen=True, order=True)
class Cut:
    """One hop: the output of front block ``out_block`` feeds end block ``in_block``."""

    out_block: int
    in_block: int


@dataclass(frozen=True, order=True)
class Stitch:
    """A route through the anchors with a cut between consecutive anchors.

    Example:
        >>> s = Stitch.parse("0:3-1:4")
        >>> s.route, s.cuts
        ((0, 1), (Cut(out_block=3, in_block=4),))
        >>> str(s), Stitch.anchor(2)
        ('0:3-1:4', Stitch('2'))
    """

    route: tuple[int, ...]
    cuts: tuple[Cut, ...] = ()

    def __post_init__(self) -> None:
        if not self.route:
            raise ValueError("a stitch needs at least one anchor in its route")
        if len(self.cuts) != len(self.route) - 1:
            raise ValueError(
                f"a route through {len(self.route)} anchors needs {len(self.route) - 1} cuts, "
                f"got {len(self.cuts)}"
            )
        if any(a < 0 for a in self.route) or any(
            c.out_block < 0 or c.in_block < 0 for c in self.cuts
        ):
            raise ValueError("anchor and block indices of a stitch are non-negative")
        # Cached so that switching stitches (a dict lookup) allocates nothing.
        object.__setattr__(self, "_hash", hash((self.route, self.cuts)))

    def __hash__(self) -> int:
        return self._hash

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def anchor(cls, index: int) -> Stitch:
        """The anchor ``index`` on its own."""
        return cls((index,))

    @classmethod
    def between(cls, front: int, out_block: int, end: int, in_block: int) -> Stitch:
        """One hop from anchor ``front`` (after ``out_block``) into anchor ``end`` (at ``in_block``)."""
        return cls((front, end), (Cut(out_block, in_block),))

    @classmethod
    def parse(cls, text: str | Stitch) -> Stitch:
        """Read the string form (see the module docstring); a ``Stitch`` passes through."""
        if isinstance(text, Stitch):
            return text
        parts = str(text).strip().split("-")
        if not all(_SEGMENT.match(p) for p in parts):
            raise ValueError(
                f"cannot read stitch {text!r}: expected forms like '1' (an anchor), "
                "'0:3-1:4' (anchor 0 through block 3, then anchor 1 from block 4) or "
                "'0:3-1:4:7-2:8' (a route through three anchors)"
            )
        nums = [[int(n) for n in p.split(":")] for p in parts]
        if len(nums) == 1:
            if len(nums[0]) != 1:
                raise ValueError(f"cannot read stitch {text!r}: an anchor is a single number")
            return cls.anchor(nums[0][0])
        # first: anchor:out, middle: anchor:in:out, last: anchor:in
        expected = [2] + [3] * (len(nums) - 2) + [2]
        if [len(n) for n in nums] != expected:
            raise ValueError(
                f"cannot read stitch {text!r}: the first anchor is 'a:out', middle anchors "
                "'a:in:out' and the last anchor 'a:in'"
            )
        route = tuple(n[0] for n in nums)
        outs = [nums[0][1]] + [n[2] for n in nums[1:-1]]
        ins = [n[1] for n in nums[1:]]
        return cls(route, tuple(Cut(o, i) for o, i in zip(outs, ins, strict=True)))

    @classmethod
    def from_json(cls, obj: dict[str, Any] | str) -> Stitch:
        """Inverse of :meth:`to_json`; also accepts the string form."""
        if isinstance(obj, str):
            return cls.parse(obj)
        try:
            return cls(tuple(obj["route"]), tuple(Cut(*c) for c in obj["cuts"]))
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"not a stitch: {obj!r} (expected {{'route': [...], 'cuts': [...]}})"
            ) from e

    # -- views --------------------------------------------------------------------------------
    @property
    def is_anchor(self) -> bool:
        return len(self.route) == 1

    @property
    def hops(self) -> tuple[tuple[int, int, Cut], ...]:
        """``(front anchor, end anchor, cut)`` for every hop of the route."""
        return tuple(zip(self.route[:-1], self.route[1:], self.cuts, strict=True))

    def segments(self, num_blocks: list[int] | tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
        """``(anchor, start, stop)`` block ranges run in order, given each anchor's block count."""
        starts = [0] + [c.in_block for c in self.cuts]
        stops = [c.out_block + 1 for c in self.cuts] + [num_blocks[self.route[-1]]]
        return tuple(zip(self.route, starts, stops, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"route": list(self.route), "cuts": [[c.out_block, c.in_block] for c in self.cuts]}

    def __str__(self) -> str:
        if self.is_anchor:
            return str(self.route[0])
        ins = [None, *(c.in_block for c in self.cuts)]
        outs = [*(c.out_block for c in self.cuts), None]
        return "-".join(
            ":".join(str(n) for n in (a, i, o) if n is not None)
            for a, i, o in zip(self.route, ins, outs, strict=True)
        )

    def __repr__(self) -> str:
        return f"Stitch({str(self)!r})"
