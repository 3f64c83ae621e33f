"""The end-to-end demo on the offline default: Fashion-MNIST and snnet's shipped ViT family.

Least-squares init -> train the SN-Net -> evaluate every stitch in one pass -> table + plot.
Every stage resumes: run it again after a stop or a kill and it continues from the last
checkpoint. A stopped training run is never evaluated: :func:`run_demo` returns a report that
says where it stopped, and the command line says how to continue.

The settings are a plain value and this module loads torch only when the demo runs, so
``snnet demo --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snnet.files import atomic_write
from snnet.rundir import RunDir

if TYPE_CHECKING:
    from snnet.measure.results import Results


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """The demo's recipe: least squares on 512 images, then 16 epochs of SN-Net training in which
    every stitch learns from a frozen copy of the anchor it ends in (soft distillation, T = 2,
    weight 0.5; an anchor's own path from its starting self; the copies' logits of every
    training image computed once), a quarter of the steps run an anchor's own path, and the
    anchors learn at half the stitching layers' rate.

    Why: stitches gain only when the anchors co-adapt to them, and that costs the anchors. The
    distillation and the anchor paths hold the anchors near their standalone accuracy while they
    move, and the length of the run is what lets the stitches catch up; 16 epochs is what fits
    the demo's ten minutes on two CPU cores (``benchmarks/README.md`` has the measurements).
    """

    epochs: int = 16
    steps: int | None = None
    batch_size: int = 128
    lr: float = 2e-3
    anchor_lr_scale: float = 0.5
    ls_images: int = 512
    eval_images: int | None = None  # None: the whole 10,000-image test set
    seed: int = 0
    # Validation after every epoch on a fixed stratified sample of test images (the anchors and
    # 3 stitches; RUN/val.csv, RUN/tb/). 0: none. It changes no trained weight.
    val_images: int = 1000
    distill: str = "end"
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    anchor_probability: float | None = 0.25
    cache_teachers: bool = True


@dataclass(frozen=True)
class DemoReport:
    """Where the demo wrote its files, and what it found. ``stopped``: the signal that stopped
    its training (0: it ran to the end, and everything below was measured)."""

    run_dir: Path
    results_path: Path
    plot_path: Path
    model_dir: Path
    seconds: dict[str, float]  # of this invocation (a resumed run only times what was left)
    anchors_before: list[float]  # each shipped anchor's test top-1 alone, before training
    anchors_after: list[float]  # the same anchors inside the trained SN-Net
    pareto: list[str]
    stopped: int = 0
    steps: int = 0
    total_steps: int = 0


def run_demo(
    out: str | Path = "runs/demo",
    settings: DemoSettings | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> DemoReport:
    """Run the whole pipeline into ``out`` and return what it found.

    ``out`` is a run directory (:class:`~snnet.rundir.RunDir`); a run an earlier ``snnet demo``
    started there continues.

    Example:
        >>> report = run_demo("runs/demo")
        >>> report.plot_path
        PosixPath('runs/demo/pareto.png')
    """
    from snnet.data.images import fashion_mnist
    from snnet.network import SNNet
    from snnet.sources import resolve_anchors
    from snnet.train import fit

    settings = settings or DemoSettings()
    run = RunDir(out)
    seconds: dict[str, float] = {}
    anchors, options = resolve_anchors("fmnist")
    net = SNNet(anchors, **options)
    resume = run.checkpoint.exists()
    train, test = fashion_mnist("train"), fashion_mnist("test")
    t = time.perf_counter()
    trained = fit(
        net,
        train,
        train_config(settings, len(train)),
        val=test if settings.val_images else None,
        anchor_images=test,
        run_dir=run.training,
        resume=resume,
        ls_init=settings.ls_images,
        device=device,
        progress=progress,
        val_images=settings.val_images or None,
    )
    seconds["train (incl. least squares)"] = time.perf_counter() - t
    report = DemoReport(
        run.path, run.results, run.plot, run.model, seconds, trained.anchors_before, [], [],
        stopped=trained.interrupted, steps=trained.steps, total_steps=trained.total_steps,
    )  # fmt: skip
    if trained.interrupted:
        return report
    report = evaluate_demo(
        net, test, run, settings, report,
        data_name="fashion-mnist test",
        title="SN-Net on Fashion-MNIST: {} stitches",
        device=device, progress=progress,
    )  # fmt: skip
    write_summary(run, report, settings, resume)
    return report


def write_summary(run: RunDir, report: DemoReport, settings: Any, resume: bool) -> None:
    """``RUN/summary.json``: what training recorded there, the report and the settings."""
    summary = json.loads(run.summary.read_text()) if run.summary.is_file() else {}
    summary.update({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report).items()})
    summary["settings"] = asdict(settings)
    summary["resumed"] = resume  # timings then cover only what this run still had to do
    atomic_write(run.summary, lambda f: json.dump(summary, f, indent=2))


def train_config(settings: DemoSettings, images: int | None = None) -> Any:
    """The :class:`~snnet.train.TrainConfig` of the demo's recipe for ``images`` training
    images. The teachers' logits are cached only when the run sees every image at least once:
    the cache computes each teaching anchor's logits of every image, which a short ``--steps``
    run would spend longer filling than training."""
    from snnet.train import TrainConfig

    steps = settings.steps
    sees_all = steps is None or images is None or steps * settings.batch_size >= images
    return TrainConfig(
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
        cache_teachers=settings.cache_teachers and sees_all,
    )


def evaluate_demo(
    net: Any,
    test: Any,
    run: RunDir,
    settings: Any,
    report: DemoReport,
    *,
    data_name: str,
    title: str,
    device: str | None,
    progress: bool,
) -> DemoReport:
    """Every stitch of the trained network on the test images (``settings.eval_images`` of
    them, drawn with ``settings.seed``), and the plot (``title``, ``{}`` taking the number of
    stitches); the report with what they found, the anchors scored by the task's metric. Both
    demos end with it."""
    from snnet.measure.evaluate import evaluate_all
    from snnet.measure.plot import plot_results

    t = time.perf_counter()
    results = evaluate_all(
        net,
        test,
        max_images=settings.eval_images,
        seed=settings.seed,
        path=run.results,
        device=device,
        progress=progress,
        data_name=data_name,
    )
    report.seconds["evaluate every stitch"] = time.perf_counter() - t
    plot_results(results, run.plot, title=title.format(len(results)))
    after = [getattr(results[str(i)], results.metric) for i in range(len(net.anchors))]
    return DemoReport(
        **{
            **asdict(report),
            "anchors_after": after,
            "pareto": [str(r.stitch) for r in results.pareto("gmacs")],
        }
    )


def format_report(report: DemoReport, results: Results, net_names: list[str]) -> str:
    """The demo's closing text: Pareto table, anchors before/after, timings, files."""
    from snnet.measure.results import format_table
    from snnet.train.pipeline import anchor_table

    front = {r.stitch for r in results.pareto("gmacs")}
    shown = [r.stitch for r in results if r.stitch in front or r.stitch.is_anchor]
    lines = [format_table(results, shown, names=net_names)]
    lines.append(
        f"\n{len(results)} stitches evaluated; {len(front)} on the Pareto front (shown, with the anchors)."
    )
    if report.anchors_before:
        lines.append(anchor_table(net_names, report.anchors_before, report.anchors_after))
    lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items()))
    lines.append(
        f"\nfiles in {report.run_dir}/:\n"
        f"  {report.results_path}  (and .csv): {results.metric}, GMACs, params of every stitch\n"
        f"  {report.plot_path}  {results.metric} vs cost, Pareto front drawn, anchors marked\n"
        f"  {report.model_dir}/  the trained SN-Net (snnet.load / snnet evaluate / snnet export)\n"
        f"  {RunDir(report.run_dir).summary}  this summary"
    )
    return "\n".join(lines)
