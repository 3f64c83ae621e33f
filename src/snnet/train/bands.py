"""Cost bands: stitches sorted by cost and cut into bands of one width (SN-Netv2's resource-
constrained sampling). The sampler draws a band, then a stitch in it; importance rankings are
compared with accuracy inside each band."""

from __future__ import annotations

from snnet.stitch import Stitch

#: Cost bands used when grouping without an explicit ``gap``.
DEFAULT_BANDS = 8


def flops_groups(costs: dict[Stitch, float], gap: float) -> list[list[Stitch]]:
    """Stitches sorted by cost and cut into bands of width ``gap``: sampling a band, then a
    stitch in it, trains every cost range equally.

    Example:
        >>> flops_groups({Stitch.anchor(0): 1.0, Stitch.anchor(1): 2.5}, gap=1.0)
        [[Stitch('0')], [Stitch('1')]]
    """
    if gap <= 0:
        raise ValueError(f"gap must be positive, got {gap}")
    order = sorted(costs, key=lambda s: (costs[s], str(s)))
    groups: list[list[Stitch]] = []
    low = None
    for s in order:
        if low is None or costs[s] >= low + gap:
            groups.append([])
            low = costs[s]
        groups[-1].append(s)
    return groups


def default_gap(costs: dict[Stitch, float], bands: int = DEFAULT_BANDS) -> float:
    """A band width that cuts the cost range into about ``bands`` bands."""
    low, high = min(costs.values()), max(costs.values())
    return (high - low) / bands if high > low else 1.0
