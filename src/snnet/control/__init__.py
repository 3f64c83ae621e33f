"""Switching stitches at runtime to follow a budget: :class:`BudgetController` for a cost
budget (GMACs, parameters, latency), :class:`SloController` for a server's latency SLO.

Nothing here imports torch: a controller reads a results table and is told what happens.
"""

from snnet.control.budget import BudgetController
from snnet.control.policy import SloPolicy, Steps, Windows
from snnet.control.slo import SloController

__all__ = ["BudgetController", "SloController", "SloPolicy", "Steps", "Windows"]
