"""Scale-out on Ray Serve: the same serving core, one replica per core (or GPU).

Each replica loads the network once (:func:`~snnet.serve.backend.load_backend`), reads requests
with the same parser and answers in the same JSON as ``snnet serve``; Ray's ``@serve.batch``
forms the micro-batches, the same :class:`~snnet.serve.executor.BatchExecutor` as ``snnet
serve``'s runs them, and Ray's autoscaler adds replicas as the queue grows. With ``slo_ms`` each
replica runs its own :class:`~snnet.control.SloController` on the requests it sees.

Each replica bounds its own queue as ``snnet serve`` does (:func:`~snnet.serve.admission.queue_limit`:
``max_queue``, else what the cheapest stitch clears within the SLO, and with an SLO no more
than it answers in time, :func:`~snnet.serve.admission.inflight_limit`): beyond it a request is
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

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from snnet import settings as settings_text
from snnet.serve.app import error_response
from snnet.serve.backend import load_backend
from snnet.serve.errors import ServeError
from snnet.serve.executor import BatchExecutor, Item, Prediction, tune_interpreter
from snnet.serve.predict import answer, decode_request, read_request
from snnet.serve.settings import ServeSettings
from snnet.threads import usable_cores

#: Keys of ``build``'s arguments that place replicas; every other key is a ServeSettings field.
REPLICA_KEYS = ("run", "num_replicas", "min_replicas", "max_replicas")


@serve.deployment(
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    graceful_shutdown_wait_loop_s=0.5,
    graceful_shutdown_timeout_s=30,
)
class SNNetDeployment:
    """One replica: the network, its batch executor, and Ray's batching in front of them."""

    def __init__(self, run: str, settings: dict[str, Any]) -> None:
        self.settings = s = ServeSettings(**settings)
        self.backend = load_backend(run, device=s.device, threads=s.threads)
        self.executor = BatchExecutor(self.backend, s, offload=asyncio.to_thread)
        self.replica = f"{os.uname().nodename}:{os.getpid()}"
        self.waiting = 0  # images this replica accepted and has not answered yet
        self.infer.set_max_batch_size(s.max_batch)
        self.infer.set_batch_wait_timeout_s(s.max_wait_ms / 1e3)
        tune_interpreter()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer(self, items: list[Item]) -> list[Prediction | ServeError]:
        """One micro-batch (formed by Ray, which holds the queue): the arrivals, the stitch
        (relief for a batch that waited), each stitch's group run."""
        ex = self.executor
        now = time.monotonic()
        ex.arrived(now, len(items))
        waited_ms = (now - min(item.queued for item in items)) * 1e3
        chosen = ex.choose(now, 0, waited_ms, len(items))
        out: list[Prediction | ServeError] = [None] * len(items)  # type: ignore[list-item]
        await ex.run(items, chosen, out.__setitem__)
        return out

    async def __call__(self, request: Request) -> JSONResponse:
        # latency counts from here (reading and decoding included); time in Ray's proxy and
        # router before the replica got the request is outside it
        arrived = time.monotonic()
        try:
            self._admit(0)  # a full replica refuses before reading the body
            req = await read_request(request, self.settings)
            want = self.executor.resolve(req.stitch, req.max_gmacs, req.max_latency_ms)
            xs = await decode_request(self.backend, req, self.settings)
            self._admit(len(xs))
            self.waiting += len(xs)
            try:
                queued = time.monotonic()
                preds = await asyncio.gather(*(self.infer(Item(x, want, queued)) for x in xs))
            finally:
                self.waiting -= len(xs)
            for p in preds:
                if isinstance(p, ServeError):
                    raise p
        except ServeError as e:
            return error_response(e)
        latency = lambda: self.executor.finish(preds, arrived)  # noqa: E731
        body = answer(self.backend, list(preds), req.top_k, latency)
        return JSONResponse({**body, "replica": self.replica})

    def _admit(self, images: int) -> None:
        """Refuse (503) when ``images`` more would overflow this replica's own queue, or exceed
        what it answers in time at the rate it answers (``executor.inflight_limit``)."""
        now = time.monotonic()
        limit = min(self.executor.queue_limit(now), self.executor.inflight_limit(now))
        if self.waiting + max(images, 1) > limit:
            raise self.executor.overloaded(self.waiting)


def split_args(args: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``build``'s arguments as the run, Ray's replica options and the typed settings (values
    from a shell arrive as text; an unknown key is a ``ValueError`` naming the known ones)."""
    args = dict(args)
    if "run" not in args:
        raise ValueError("run=RUN is required: a run directory or saved network")
    run = str(args.pop("run"))
    replicas: dict[str, Any] = {}
    if "min_replicas" in args or "max_replicas" in args:
        lo, hi = int(args.pop("min_replicas", 1)), int(args.pop("max_replicas", usable_cores()))
        replicas["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": hi,
            "target_ongoing_requests": 2 * int(args.get("max_batch", 8)),
        }
    else:
        replicas["num_replicas"] = int(args.pop("num_replicas", 1))
    try:
        settings = settings_text.parse_text(ServeSettings, args)
    except ValueError as e:
        raise ValueError(f"{e} (or {', '.join(REPLICA_KEYS)})") from None
    ServeSettings(**settings)  # refuse bad values here, not in every replica
    return run, replicas, settings


def build(args: dict[str, Any]) -> serve.Application:
    """The application for ``serve.run`` / ``serve run snnet.serve.ray:build KEY=VALUE ...``.

    ``run`` (required) is a run directory; ``num_replicas`` (default 1) or ``min_replicas`` /
    ``max_replicas`` for Ray's autoscaling; every other key is a
    :class:`~snnet.serve.settings.ServeSettings` field (``slo_ms``, ``max_batch``, ...);
    ``device=cuda`` gives each replica one GPU.
    """
    run, replicas, settings = split_args(args)
    if settings.get("device", "cpu").startswith("cuda"):  # one GPU per replica
        replicas["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    return SNNetDeployment.options(**replicas).bind(run, settings)
