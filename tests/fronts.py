"""A front exported as users export it (``snnet export RUN --front``), for the server's tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: The four-stitch front of the demo family the ONNX Runtime server's tests serve.
DEMO_FRONT = ["0", "0:5-1:6", "1:3-2:3", "2"]


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


def demo_front(tmp_path_factory, out: Path) -> tuple[Path, Path]:
    """``make_run``'s run and its front of :data:`DEMO_FRONT`, copied into ``out``: exported
    once per test session and shared by the test processes (the export takes seconds per
    stitch; both are deterministic), each test file getting a copy of its own to write in."""
    from filelock import FileLock

    from test_serve import make_run

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "demo-front"
    with FileLock(f"{shared}.lock"):
        if not (shared / "front" / "config.json").is_file():
            shutil.rmtree(shared, ignore_errors=True)
            make_front(make_run(shared / "run"), shared / "front", DEMO_FRONT)
    shutil.copytree(shared, out)
    return out / "run", out / "front"
