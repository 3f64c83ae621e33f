"""Measuring every stitch: accuracy in one pass (:mod:`~snnet.measure.evaluate`), latency,
the results table with its field metadata, the Pareto front, selection by budget, and plots."""
