"""``snnet serve``: serve a run over HTTP, holding a latency SLO by switching stitches."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from snnet.cli.common import add_threads_argument

API_KEY_ENV = "SNNET_API_KEY"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory or saved network with results.json")
    p.add_argument("--results", default=None, help="results file (default RUN/results.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--slo-ms",
        type=float,
        default=None,
        help="end-to-end p99 target: switch stitches to hold it (default: one fixed stitch)",
    )
    p.add_argument(
        "--stitch", default=None, help="the stitch to run without --slo-ms (default: most accurate)"
    )
    p.add_argument("--max-batch", type=int, default=8, help="images per micro-batch (default 8)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait for a batch to fill (default 5)",
    )
    add_threads_argument(p, default=1, help="torch threads for inference (default 1)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the network runs: cpu (default), cuda, cuda:1 ... (latency measured on "
        "another kind of device is measured again at start-up)",
    )
    p.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="run stitches eagerly (default: the front runs as TorchScript traces, the same "
        "operators on the same weights without Python's per-layer cost)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="images the queue holds before refusing (default: what the cheapest stitch clears "
        "within the SLO)",
    )
    p.add_argument("--max-images", type=int, default=16, help="images per request (default 16)")
    p.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MB)"
    )
    p.add_argument(
        "--hold-s",
        type=float,
        default=None,
        help="seconds the load must stay low before stepping up a stitch (default 2)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"bearer token for /v1 and /metrics (or ${API_KEY_ENV}); required off loopback",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from snnet.serve.app import create_app
        from snnet.serve.batcher import ServeSettings
        from snnet.serve.model import ServedModel
    except ImportError as e:
        raise ValueError(
            f"snnet serve needs the serve extra: pip install 'snnet[serve]' ({e})"
        ) from None
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if not _loopback(args.host) and not api_key:
        raise ValueError(
            f"binding {args.host} exposes the server beyond this machine: set --api-key "
            f"(or ${API_KEY_ENV})"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    settings = ServeSettings(
        slo_ms=args.slo_ms,
        stitch=args.stitch,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        max_queue=args.max_queue,
        max_images=args.max_images,
        **({} if args.hold_s is None else {"hold_s": args.hold_s}),
        device=args.device,
        trace=args.trace,
    )
    model = ServedModel.load(args.run, results=args.results, device=args.device)
    if args.stitch is not None:
        model.net.space.check(args.stitch)
    app = create_app(model, settings, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20))
    mode = f"p99 <= {args.slo_ms:g} ms" if args.slo_ms else f"stitch {args.stitch or 'best'}"
    print(
        f"serving {model.source}: {len(model.results)} stitches, {len(model.front)} on the "
        f"latency/top-1 front; {mode}; batches of <= {args.max_batch} within "
        f"{args.max_wait_ms:g} ms; {args.threads} torch thread(s)",
        flush=True,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: not ready, then drain
            app.state.shutting_down = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    Server(config).run()
    return 0
