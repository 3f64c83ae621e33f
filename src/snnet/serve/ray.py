"""Scale-out on Ray Serve: the same serving core, one replica per core (or GPU).

Each replica loads the network once (:class:`~snnet.serve.model.ServedModel`), reads requests
with the same parser and answers in the same JSON as ``snnet serve``; Ray's ``@serve.batch``
forms the micro-batches and Ray's autoscaler adds replicas as the queue grows. With ``slo_ms``
each replica runs its own :class:`~snnet.controller.BudgetController` on the requests it sees.

Each replica bounds its own queue as ``snnet serve`` does (:func:`~snnet.serve.batcher.queue_limit`:
``max_queue``, else what the cheapest stitch clears within the SLO): beyond it a request is
answered at once with 503 and ``Retry-After``. On shutdown (scale-down, redeploy, ``serve
delete``) Ray stops routing to the replica and waits up to ``graceful_shutdown_timeout_s`` for the
requests it holds, so every accepted request is answered; the batch wait is far below that.

Example (``pip install 'snnet[ray]'``)::

    from ray import serve
    from snnet.serve.ray import build

    serve.run(build({"run": "runs/demo", "slo_ms": 50, "num_replicas": 2}))
    # or from a shell:  serve run snnet.serve.ray:build run=runs/demo slo_ms=50
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from snnet.serve.app import _error_response, answer, read_request
from snnet.serve.batcher import (
    Prediction,
    ServeSettings,
    Want,
    overloaded,
    prepare,
    queue_limit,
    resolve_want,
    stitch_for,
    tune_interpreter,
)
from snnet.serve.model import ServedModel, ServeError, decode_image


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    graceful_shutdown_wait_loop_s=0.5,
    graceful_shutdown_timeout_s=30,
)
class SNNetDeployment:
    """One replica: the network, its controller, and Ray's batching in front of them."""

    def __init__(self, run: str, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings(**settings)
        torch.set_num_threads(self.settings.threads)
        self.model = ServedModel.load(run, device=self.settings.device)
        self.ctrl = prepare(self.model, self.settings)
        self.replica = f"{os.uname().nodename}:{os.getpid()}"
        self.waiting = 0  # images this replica accepted and has not answered yet
        s = self.settings
        self.infer.set_max_batch_size(s.max_batch)
        self.infer.set_batch_wait_timeout_s(s.max_wait_ms / 1e3)
        tune_interpreter()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer(self, items: list[tuple[torch.Tensor, Want, float]]) -> list[Prediction]:
        """One micro-batch (formed by Ray): pick the stitch, run each stitch's group."""
        now = time.monotonic()
        if self.settings.slo_ms is not None:
            self.ctrl.observe_arrival(now, len(items))
            # Ray holds the queue: the rate and the p99, and relief for a batch that waited
            waited_ms = (now - min(item[2] for item in items)) * 1e3
            chosen = self.ctrl.update(now, 0, waited_ms=waited_ms, batch_size=len(items))
        else:
            chosen = self.model.net.stitch
        out: list[Prediction | None] = [None] * len(items)
        groups: dict[Any, list[int]] = {}
        for i, (_, want, _) in enumerate(items):
            groups.setdefault(stitch_for(self.model, want, chosen), []).append(i)
        for stitch, idx in groups.items():
            x = torch.stack([items[i][0] for i in idx])
            start = time.perf_counter()
            probs = await asyncio.to_thread(self.model.predict, x, stitch)
            compute_ms = (time.perf_counter() - start) * 1e3
            done = time.monotonic()
            if self.settings.slo_ms is not None and self.ctrl.on_front(stitch):
                self.ctrl.observe_batch(stitch, len(idx), compute_ms, done)
            for i, p in zip(idx, probs, strict=True):
                waited = (done - items[i][2]) * 1e3 - compute_ms
                out[i] = Prediction(p, stitch, len(idx), max(0.0, waited), compute_ms)
        return out

    async def __call__(self, request: Request) -> JSONResponse:
        # latency counts from here (reading and decoding included); time in Ray's proxy and
        # router before the replica got the request is outside it
        arrived = time.monotonic()
        try:
            self._admit(0)  # a full replica refuses before reading the body
            req = await read_request(request, self.settings)
            want = resolve_want(
                self.model, self.ctrl.slowdown, req.stitch, req.max_gmacs, req.max_latency_ms
            )
            xs = [
                self.model.preprocess.pixels(decode_image(b, max_pixels=self.settings.max_pixels))
                for b in req.images
            ]
            self._admit(len(xs))
            self.waiting += len(xs)
            try:
                queued = time.monotonic()
                preds = await asyncio.gather(*(self.infer((x, want, queued)) for x in xs))
            finally:
                self.waiting -= len(xs)
        except ServeError as e:
            return _error_response(e)
        body = answer(self.model, list(preds), req.top_k, lambda: self._finish(preds, arrived))
        return JSONResponse({**body, "replica": self.replica})

    def _admit(self, images: int) -> None:
        """Refuse (503) when ``images`` more would overflow this replica's own queue."""
        if self.waiting + max(images, 1) > queue_limit(self.settings, self.ctrl, time.monotonic()):
            raise overloaded(self.model, self.settings, self.ctrl, self.waiting)

    def _finish(self, preds: list[Prediction], arrived: float) -> float:
        """End-to-end latency (ms) of a request answered now, told to the controller."""
        now = time.monotonic()
        latency = (now - arrived) * 1e3
        if self.settings.slo_ms is not None:
            for p in preds:
                self.ctrl.observe_request(now, latency, p.queue_ms + p.compute_ms)
        return latency


_TYPES = {
    "slo_ms": float,
    "stitch": str,
    "max_batch": int,
    "max_wait_ms": float,
    "threads": int,
    "device": str,
    "max_queue": int,
    "max_images": int,
    "max_pixels": int,
    "top_k": int,
    "hold_s": float,
}


def build(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve.run`` / ``serve run snnet.serve.ray:build KEY=VALUE ...``.

    ``run`` (required) is a run directory; ``num_replicas`` (default 1) or ``min_replicas`` /
    ``max_replicas`` for Ray's autoscaling; every other key is a
    :class:`~snnet.serve.batcher.ServeSettings` field (``slo_ms``, ``max_batch``, ...);
    ``device=cuda`` gives each replica one GPU.
    """
    args = dict(args)
    run = str(args.pop("run"))
    replicas: dict[str, Any] = {}
    if "min_replicas" in args or "max_replicas" in args:
        lo, hi = int(args.pop("min_replicas", 1)), int(args.pop("max_replicas", os.cpu_count()))
        replicas["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": hi,
            "target_ongoing_requests": 2 * int(args.get("max_batch", 8)),
        }
    else:
        replicas["num_replicas"] = int(args.pop("num_replicas", 1))
    settings = {}
    for key, value in args.items():  # values from a shell arrive as strings
        if key not in _TYPES:
            raise ValueError(
                f"unknown setting {key!r}; choose from run, num_replicas, {list(_TYPES)}"
            )
        settings[key] = _TYPES[key](value)
    if settings.get("device", "cpu").startswith("cuda"):  # one GPU per replica
        replicas["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    return SNNetDeployment.options(**replicas).bind(run, settings)
