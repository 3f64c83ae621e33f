"""The end-to-end demo on the offline default: Fashion-MNIST and snnet's shipped ViT family.

Least-squares init -> train the SN-Net -> evaluate every stitch in one pass -> table + plot. Every
stage resumes: run it again after a kill and it continues from the last checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from snnet.data import fashion_mnist
from snnet.files import atomic_write
from snnet.measure.evaluate import evaluate_all
from snnet.measure.plot import plot_results
from snnet.measure.results import Results, format_table
from snnet.network import SNNet
from snnet.rundir import RunDir
from snnet.sources import resolve_anchors
from snnet.train.loop import TrainConfig, fit
from snnet.zoo import demo_anchor_record, demo_family_names


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """The demo's recipe: least squares on 512 images, then 16 epochs of SN-Net training in which
    every stitch learns from a frozen copy of the anchor it ends in (soft distillation, T = 2,
    weight 0.5; an anchor's own path from its starting self; the copies' logits of every training
    image computed once), a quarter of the steps run an anchor's own path, and the anchors learn
    at half the stitching layers' rate.

    Why: stitches gain only when the anchors co-adapt to them, and that costs the anchors. The
    distillation and the anchor paths hold the anchors near their standalone accuracy while they
    move, and the length of the run is what lets the stitches catch up (on the family before,
    widths 8 / 24 / 64, seed 0, 5,000 test images: 2 / 4 / 8 epochs gave a mean stitch of 82.8 /
    83.9 / 84.9 %, 1 / 2 / 8 stitches on the front and anchors within 0.86 / 0.36 / 0.38 point of
    their standalone accuracy; without distillation 4 epochs gave 83.7 % and 1 stitch; on this
    family, seed 0: 8 / 10 / 12 / 16 epochs left widest front gaps of 2.69 / 2.29 / 2.21 /
    1.84x; 18 epochs close the gap with every seed; ``benchmarks/recipe/FINDINGS.md``). 16
    epochs is what fits the demo's 10 minutes on 2 cores, install included, when the machine
    runs at its usual speed: a step takes ~0.055 s at 1 thread with the teachers' logits cached
    (~0.075 s without; 2 threads are slower on models this small), ~0.068 s when the shared
    host is slow. Results over seeds: ``benchmarks/bench_demo_family.py``.
    """

    epochs: int = 16
    steps: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    anchor_lr_scale: float = 0.5
    ls_images: int = 512
    eval_images: int | None = None  # None: the whole 10,000-image test set
    seed: int = 0
    # Validation after every epoch on a fixed sample of test images (the anchors and 3 stitches;
    # RUN/val.csv, RUN/tb/). 0: none. It changes no trained weight; one check took 2.5-2.9 s
    # against 90-107 s for an epoch's 468 steps (1 thread, 2 cores other jobs loaded to 8-10),
    # i.e. about 3 % of the training time (7-9 % once, on a busier machine).
    val_images: int = 1000
    distill: str = "end"
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    anchor_probability: float | None = 0.25
    cache_teachers: bool = True


@dataclass(frozen=True)
class DemoReport:
    """Where the demo wrote its files, and what it found."""

    run_dir: Path
    results_path: Path
    plot_path: Path
    model_dir: Path
    seconds: dict[str, float]  # of this invocation (a resumed run only times what was left)
    anchors_before: list[float]  # standalone test top-1 of each shipped anchor
    anchors_after: list[float]  # the same anchors inside the trained SN-Net
    pareto: list[str]


def run_demo(
    out: str | Path = "runs/demo",
    settings: DemoSettings | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> DemoReport:
    """Run the whole pipeline into ``out`` and return what it found.

    ``out`` is a run directory (:class:`~snnet.rundir.RunDir`); a run an earlier snnet demo
    started there continues in its own layout.

    Example:
        >>> report = run_demo("runs/demo")
        >>> report.plot_path
        PosixPath('runs/demo/pareto.png')
    """
    settings = settings or DemoSettings()
    run = RunDir.at(out)
    seconds: dict[str, float] = {}

    anchors, options = resolve_anchors("fmnist")
    net = SNNet(anchors, **options)
    config = TrainConfig(
        epochs=settings.epochs,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        anchor_lr_scale=settings.anchor_lr_scale,
        seed=settings.seed,
        distill=settings.distill,
        distill_temperature=settings.distill_temperature,
        distill_weight=settings.distill_weight,
        anchor_probability=settings.anchor_probability,
        cache_teachers=settings.cache_teachers,
    )
    resume = run.checkpoint.exists()
    t = time.perf_counter()
    fit(
        net,
        fashion_mnist("train"),
        config,
        run_dir=run.training,
        resume=resume,
        ls_init=settings.ls_images,
        device=device,
        progress=progress,
        val=fashion_mnist("test") if settings.val_images else None,
        val_images=settings.val_images or None,
    )
    seconds["train (incl. least squares)"] = time.perf_counter() - t

    t = time.perf_counter()
    results = evaluate_all(
        net,
        fashion_mnist("test"),
        max_images=settings.eval_images,
        path=run.results,
        device=device,
        progress=progress,
        data_name="fashion-mnist test",
    )
    seconds["evaluate every stitch"] = time.perf_counter() - t
    plot_results(results, run.plot, title=f"SN-Net on Fashion-MNIST: {len(results)} stitches")

    before = [float(demo_anchor_record(n)["test_acc"]) for n in demo_family_names()]
    after = [results[str(i)].top1 for i in range(len(net.anchors))]
    report = DemoReport(
        run_dir=run.path,
        results_path=run.results,
        plot_path=run.plot,
        model_dir=run.model,
        seconds=seconds,
        anchors_before=before,
        anchors_after=after,
        pareto=[str(r.stitch) for r in results.pareto("gmacs", "top1")],
    )
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report).items()}
    summary["settings"] = asdict(settings)
    summary["resumed"] = resume  # timings then cover only what this run still had to do
    atomic_write(run.summary, lambda f: json.dump(summary, f, indent=2))
    return report


def format_report(report: DemoReport, results: Results, net_names: list[str]) -> str:
    """The demo's closing text: Pareto table, anchors before/after, timings, files."""
    front = {r.stitch for r in results.pareto("gmacs", "top1")}
    shown = [r.stitch for r in results if r.stitch in front or r.stitch.is_anchor]
    lines = [format_table(results, shown, names=net_names)]
    lines.append(
        f"\n{len(results)} stitches evaluated; {len(front)} on the Pareto front (shown, with the anchors)."
    )
    lines.append("anchor accuracy, standalone -> inside the trained SN-Net:")
    for name, b, a in zip(net_names, report.anchors_before, report.anchors_after, strict=True):
        lines.append(f"  {name:<14} {b:6.2f} % -> {a:6.2f} % ({a - b:+.2f})")
    lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()))
    lines.append(
        f"\nfiles in {report.run_dir}/:\n"
        f"  {report.results_path}  (and .csv): accuracy, GMACs, params of every stitch\n"
        f"  {report.plot_path}  accuracy vs cost, Pareto front drawn, anchors marked\n"
        f"  {report.model_dir}/  the trained SN-Net (snnet.load / snnet evaluate / snnet export)\n"
        f"  {RunDir(report.run_dir).summary}  this summary"
    )
    return "\n".join(lines)
