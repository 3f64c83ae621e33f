"""A front exported as users export it (``snnet export RUN --front``), for the server's tests."""

from __future__ import annotations

from pathlib import Path


def make_front(run: Path, out: Path, stitches: list[str] | None = None) -> Path:
    """The ONNX front of ``run`` (or of ``stitches``), exported into ``out``."""
    import snnet
    from snnet.export.front import export_front
    from snnet.measure.results import Results
    from snnet.rundir import RunDir

    found = RunDir.find(run)
    net = snnet.load(found.model).eval()
    export_front(net, out, ["onnx"], stitches=stitches, results=Results.load(found.results))
    return out
