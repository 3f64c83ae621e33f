"""How much each stitch matters, estimated from the training gradients (ESTA's stitch importance).

After each backward pass, a stitch's *saliency* is the first-order estimate of how much the loss
would change if the weights it ran were removed: ``|g · w|`` per parameter (SNIP's connection
sensitivity), averaged over the trainable parameters the stitch ran
(:meth:`SNNet.parameters_of <snnet.network.SNNet.parameters_of>`). An exponential moving average
per stitch turns these noisy one-batch values into an estimate that :class:`StitchImportance`
keeps, the stitch sampler draws from (``TrainConfig(sampling="importance")``), checkpoints carry,
and ``importance.json`` in the run directory ranks after training (``snnet importance RUN``).

Why the mean rather than ESTA's sum: a sum over parameters grows with the stitch's size, so the
largest stitches would win by size alone and the ranking would only repeat the cost ordering. The
mean asks how strongly, per weight, the loss depends on what the stitch runs.

Under torchrun the saliencies are computed from the gradients after DDP's all-reduce, which are
identical on every rank; every rank computes every rank's stitch's saliency from those shared
values, so the estimate is the same on every rank without any message. With ``independent`` or
``balanced`` rank sampling the shared gradient of a part that several ranks ran mixes their
stitches' losses, so the saliency of one stitch also carries its neighbours' signal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from snnet.files import atomic_write
from snnet.stitch import Stitch
from snnet.train.bands import default_gap, flops_groups

if TYPE_CHECKING:
    from snnet.measure.results import Results
    from snnet.network import SNNet

FORMAT = "snnet-importance"
VERSION = 1


@torch.no_grad()
def saliencies(net: SNNet, stitches: Sequence[Stitch]) -> dict[Stitch, float]:
    """Each of ``stitches``' mean ``|grad · weight|`` over the parameters it ran that hold a
    gradient now (call after backward, before the optimizer step; gradients are only read).
    A stitch none of whose parameters holds a gradient (e.g. everything it runs is frozen) is
    left out.

    Example:
        >>> loss.backward()
        >>> saliencies(net, [stitch])
        {Stitch(...): 3.1e-05}
    """
    ran = {s: [p for p in net.parameters_of(s) if p.grad is not None] for s in stitches}
    union = list({id(p): p for ps in ran.values() for p in ps}.values())
    if not union:
        return {}
    # Each parameter once, however many of the stitches ran it: sum |g·w| as the L1 norm of g·w,
    # two batched (foreach) kernels for all tensors rather than three small ones per tensor.
    products = torch._foreach_mul([p.grad for p in union], [p.detach() for p in union])
    norms = torch.stack(torch._foreach_norm(products, 1)).double()  # (parameters,)
    index = {id(p): i for i, p in enumerate(union)}
    out: dict[Stitch, float] = {}
    for stitch, params in ran.items():
        if params:
            picked = norms[[index[id(p)] for p in params]]
            out[stitch] = float(picked.sum()) / sum(p.numel() for p in params)
    return out


@dataclass(frozen=True)
class Importance:
    """One stitch's estimate: the moving average ``value`` of its saliency over the
    ``observations`` steps that ran it."""

    stitch: Stitch
    value: float
    observations: int

    def to_json(self) -> dict[str, Any]:
        return {"stitch": str(self.stitch), "value": self.value, "observations": self.observations}


class StitchImportance:
    """The importance estimate of every stitch, and the sampling distribution it gives.

    ``momentum`` is the moving average's weight on the past (a stitch's first observation sets
    its value). For ``warmup`` observed steps every stitch is drawn uniformly; then stitch ``s``
    is drawn with probability ``floor / N + (1 - floor) · w_s / Σ w`` where
    ``w_s = (value_s / max value) ** (1 / temperature)``: ``floor`` is the share of draws that
    stay uniform, so every stitch keeps at least ``floor / N``; a higher ``temperature`` flattens
    the weights. A stitch not observed yet weighs as much as the most important one, so it is
    tried soon.

    Example:
        >>> est = StitchImportance(net.stitches, momentum=0.9, warmup=100)
        >>> est.observe(saliencies(net, [stitch]))
        >>> est.ranking()[0].stitch        # the most important stitch so far
    """

    def __init__(
        self,
        stitches: Sequence[Stitch],
        *,
        momentum: float = 0.9,
        warmup: int = 0,
        floor: float = 0.2,
        temperature: float = 1.0,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"importance momentum must lie in [0, 1), got {momentum}")
        if warmup < 0:
            raise ValueError(f"importance warmup must be >= 0, got {warmup}")
        if not 0 < floor <= 1:
            raise ValueError(f"importance floor must lie in (0, 1], got {floor}")
        if not temperature > 0:
            raise ValueError(f"importance temperature must be positive, got {temperature}")
        self.stitches = list(stitches)
        self.momentum, self.warmup, self.floor, self.temperature = (
            momentum,
            warmup,
            floor,
            temperature,
        )
        self.values: dict[Stitch, float] = {}
        self.observations: dict[Stitch, int] = {}
        self.steps = 0  # steps observed, for the warmup

    def observe(self, saliency: dict[Stitch, float]) -> None:
        """One training step's saliencies (one per stitch the step ran). A non-finite value
        (an fp16 step the grad scaler skips) is not counted."""
        for stitch, value in saliency.items():
            if not math.isfinite(value):
                continue
            old = self.values.get(stitch)
            self.values[stitch] = (
                value if old is None else self.momentum * old + (1 - self.momentum) * value
            )
            self.observations[stitch] = self.observations.get(stitch, 0) + 1
        self.steps += 1

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup

    def probabilities(self) -> list[float]:
        """The probability of drawing each stitch, in ``self.stitches``' order."""
        n = len(self.stitches)
        top = max(self.values.values(), default=0.0)
        if self.warming_up or top <= 0:
            return [1.0 / n] * n
        weights = [
            (self.values.get(s, top) / top) ** (1.0 / self.temperature) for s in self.stitches
        ]
        total = sum(weights)
        return [self.floor / n + (1 - self.floor) * w / total for w in weights]

    def pick(self, generator: torch.Generator) -> Stitch:
        """One stitch drawn from :meth:`probabilities` with ``generator``."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        acc = 0.0
        for stitch, p in zip(self.stitches, self.probabilities(), strict=True):
            acc += p
            if u < acc:
                return stitch
        return self.stitches[-1]  # u within rounding of 1

    def ranking(self) -> list[Importance]:
        """The observed stitches, most important first (ties: by the stitch's name)."""
        return sorted(
            (Importance(s, v, self.observations[s]) for s, v in self.values.items()),
            key=lambda i: (-i.value, str(i.stitch)),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "values": {str(s): v for s, v in self.values.items()},
            "observations": {str(s): n for s, n in self.observations.items()},
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        by_name = {str(s): s for s in self.stitches}
        unknown = sorted(set(state["values"]) - set(by_name))
        if unknown:
            raise ValueError(
                f"the importance state names stitches this network lacks ({', '.join(unknown)}): "
                "resume with the network the run started with"
            )
        self.values = {by_name[k]: float(v) for k, v in state["values"].items()}
        self.observations = {by_name[k]: int(n) for k, n in state["observations"].items()}
        self.steps = int(state["steps"])

    def to_json(self, **meta: Any) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "momentum": self.momentum,
            "steps": self.steps,
            "estimate": "mean |grad * weight| over the stitch's trainable parameters, EMA",
            **meta,
            "ranking": [i.to_json() for i in self.ranking()],
        }

    def save(self, path: str | Path, **meta: Any) -> Path:
        """Write the ranking as JSON (indent 2), e.g. ``RunDir(run).importance``."""
        path = Path(path)
        data = self.to_json(**meta)
        atomic_write(path, lambda f: json.dump(data, f, indent=2))
        return path


def load_ranking(path: str | Path) -> list[Importance]:
    """The ranking an ``importance.json`` holds, most important first.

    Example:
        >>> load_ranking(RunDir.find("runs/a").importance)[0].stitch
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: only runs trained with --sampling importance write it"
        )
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an snnet importance file (format {data.get('format')!r})")
    return [
        Importance(Stitch.parse(d["stitch"]), float(d["value"]), int(d["observations"]))
        for d in data["ranking"]
    ]


@dataclass(frozen=True)
class RankAgreement:
    """How well the importance ranking predicts the evaluated one: Kendall's ``tau`` (tau-b)
    between importance and ``metric`` over the ``count`` stitches that have both; ``band_tau``,
    the same inside each of ``bands`` cost bands (SN-Netv2's bands, about 8 over the cost range)
    averaged with each band's pairs as weights, which asks what deployment asks: among stitches of
    about one cost, does importance pick the accurate one? (NaN: no band holds two stitches.)
    ``top_overlap``: how many of the ``top`` most important stitches are among the ``top`` best
    by ``metric``."""

    tau: float
    count: int
    metric: str
    top: int
    top_overlap: int
    band_tau: float = float("nan")
    bands: int = 0


def agreement(
    ranking: Sequence[Importance], results: Results, metric: str = "top1", top: int = 5
) -> RankAgreement:
    """Compare an importance ranking with evaluated ``results``: can importance choose the
    stitches to deploy without a full evaluation? ``tau`` near 1 says yes, near 0 says no.

    Example:
        >>> agreement(load_ranking(run.importance), Results.load(run.results)).tau
    """
    from snnet.measure.results import kendall_tau

    measured = {r.stitch: getattr(r, metric) for r in results if getattr(r, metric) is not None}
    both = sorted(
        (i for i in ranking if i.stitch in measured), key=lambda i: (-i.value, str(i.stitch))
    )
    if len(both) < 2:
        raise ValueError(
            f"only {len(both)} stitches have both an importance and a {metric}: evaluate the run "
            "first (snnet evaluate RUN)"
        )
    tau = kendall_tau([i.value for i in both], [measured[i.stitch] for i in both])
    k = min(top, len(both))
    by_metric = sorted(both, key=lambda i: (-measured[i.stitch], str(i.stitch)))[:k]
    overlap = len({i.stitch for i in both[:k]} & {i.stitch for i in by_metric})
    band_tau, bands = _tau_within_bands(both, measured, {r.stitch: r.gmacs for r in results})
    return RankAgreement(tau, len(both), metric, k, overlap, band_tau, bands)


def _tau_within_bands(
    ranked: Sequence[Importance], measured: dict[Stitch, float], costs: dict[Stitch, float]
) -> tuple[float, int]:
    from snnet.measure.results import kendall_tau

    costs = {i.stitch: costs[i.stitch] for i in ranked}
    value = {i.stitch: i.value for i in ranked}
    groups = flops_groups(costs, default_gap(costs))
    weighted, pairs = 0.0, 0
    for band in groups:
        tau = kendall_tau([value[s] for s in band], [measured[s] for s in band])
        if len(band) > 1 and math.isfinite(tau):
            n = len(band) * (len(band) - 1) // 2
            weighted, pairs = weighted + n * tau, pairs + n
    return (weighted / pairs if pairs else float("nan")), len(groups)
