"""The arrival rate a server sees: a mean over seconds that a step in the load restarts."""

from __future__ import annotations

import math

from snnet.control.policy import Windows
from snnet.control.window import TimeWindow


class ArrivalRate:
    """Requests per second: the mean over ``windows.rate_s``, or the rate over the last
    ``burst_s`` (or four times that) when more or fewer arrived there than the mean explains
    (beyond ``burst_sigmas`` Poisson standard deviations). Such a step restarts the mean from
    the step, so a surge's arrivals do not hold it up for a whole window after the surge.

    Example:
        >>> rate = ArrivalRate(Windows())
        >>> rate.add(now=0.0, count=3)
        >>> rate(now=1.0)
        3.0
    """

    def __init__(self, windows: Windows) -> None:
        self.windows = windows
        self._arrivals = TimeWindow[None](windows.rate_s)
        self._since: float | None = None  # the first arrival, or the last step in the load

    def add(self, now: float, count: int = 1) -> None:
        """``count`` requests arrived at ``now``."""
        self._arrivals.add(now, None, count)
        if self._since is None:
            self._since = now

    def __call__(self, now: float) -> float:
        w = self.windows
        arrivals = self._arrivals
        arrivals.forget(now)
        window, short = w.rate_s, w.burst_s
        # a server younger than the window (or a load since its last step) has arrivals over
        # that time only: the whole window would undercount the first seconds' rate
        if self._since is not None:
            window = min(window, max(short, now - self._since))
        rate = len(arrivals) / window
        # the short window shows a surge within a fraction of a second; one four times as long
        # shows its end (a 4× drop from the surge's mean is within 5 sigmas of a 0.25-s count)
        for span in (short, 4 * short):
            recent = arrivals.count_since(now - span)
            expected = rate * span
            if abs(recent - expected) > w.burst_sigmas * math.sqrt(max(expected, 1.0)):
                arrivals.drop_before(now - span)
                self._since = now - span
                return recent / span
        return rate
