"""``snnet serve``: serve a run over HTTP, holding a latency SLO by switching stitches."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os

from snnet import settings as settings_options
from snnet.serve.settings import ServeSettings

API_KEY_ENV = "SNNET_API_KEY"


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory or saved network with results.json")
    p.add_argument("--results", default=None, help="results file (default RUN/results.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body (default 16 MB)"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"bearer token for /v1 and /metrics (or ${API_KEY_ENV}); required off loopback",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: a line per request costs the event loop)",
    )
    settings_options.add_options(p.add_argument_group("serving (ServeSettings)"), ServeSettings)


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
        from snnet.serve.backend import load_backend
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
    settings = settings_options.from_args(ServeSettings, args)
    backend = load_backend(
        args.run, results=args.results, device=settings.device, threads=settings.threads
    )
    if settings.stitch is not None:
        backend.check(settings.stitch)
    app = create_app(
        backend, settings, api_key=api_key, max_body_bytes=int(args.max_body_mb * 2**20)
    )
    s = settings
    mode = f"p99 <= {s.slo_ms:g} ms" if s.slo_ms else f"stitch {s.stitch or 'best'}"
    print(
        f"serving {backend.source}: {len(backend.results)} stitches, {len(backend.front)} on "
        f"the latency/top-1 front; {mode}; batches of <= {s.max_batch} within "
        f"{s.max_wait_ms:g} ms; {s.threads} thread(s)",
        flush=True,
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # SIGTERM/SIGINT: not ready, then drain
            app.state.shutting_down = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
    )
    Server(config).run()
    return 0
