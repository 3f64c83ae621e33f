"""The HTTP face of one replica: a FastAPI app over a :class:`~snnet.serve.batcher.Batcher`.

Errors are JSON ``{"error": {"code", "message"}}`` with their status code. Health
(``/healthz``: the process answers), readiness (``/readyz``: the model is loaded and the server
is not draining) and metrics (``/metrics``: Prometheus text) are separate endpoints; the live
page at ``/`` is static HTML + JS that polls ``/v1/status``.

A prediction's latency counts from its arrival at the app (``Gate`` stamps ``scope[ARRIVED]``
before anything else runs, so reading the body, decoding and any wait for the event loop count)
to its answer being ready; the SLO controller, ``/v1/status``, ``/metrics`` and the answer's
``latency_ms`` all use it.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snnet.serve.backend import Backend
from snnet.serve.batcher import Batcher
from snnet.serve.errors import ServeError
from snnet.serve.metrics import Metrics
from snnet.serve.predict import (
    answer,
    content_length,
    decode_request,
    limited,
    read_request,
    send_error,
    send_json,
    too_large,
)
from snnet.serve.settings import ServeSettings

logger = logging.getLogger("snnet.serve")
STATIC = resources.files("snnet.serve") / "static"
ARRIVED = "snnet.arrived"  # scope key: clock reading when a request reached the app


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before reading them whole: by the
    Content-Length header when there is one, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = content_length(scope)
        if length is not None and length > self.max_bytes:
            return await send_error(send, too_large(self.max_bytes))
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited(receive, self.max_bytes), tracking_send)
        except ServeError as e:
            if e.code != "body_too_large" or started:
                raise
            await send_error(send, e)


class Gate:
    """The outermost layer: stamps each request's arrival (``scope[ARRIVED]``, from ``clock``),
    then checks before a request is read: the API key (for ``/v1/*`` and ``/metrics``), and
    admission of predictions (``admit`` returns the refusal, or None); counts predictions in
    flight in ``state["inflight"]``. A prediction goes straight to ``predict`` (plain ASGI, see
    :mod:`snnet.serve.predict`), everything else to ``app``: a refusal costs no body read and
    no framework machinery, and neither does an answer."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        admit,
        state: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
        predict: ASGIApp | None = None,
    ) -> None:
        self.app, self.state, self.admit, self.clock = app, state, admit, clock
        self.predict = predict or app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = self.clock()
        path = scope["path"]
        if self.expected and (path.startswith("/v1/") or path == "/metrics"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return await send_error(
                    send,
                    ServeError(
                        401, "unauthorized", "send the API key as 'Authorization: Bearer KEY'"
                    ),
                )
        if path != "/v1/predict":
            return await self.app(scope, receive, send)
        refusal = self.admit()
        if refusal is not None:
            return await send_error(send, refusal)
        self.state["inflight"] += 1
        try:
            app = self.predict if scope.get("method") == "POST" else self.app
            await app(scope, receive, send)
        finally:
            self.state["inflight"] -= 1


def error_response(e: ServeError) -> JSONResponse:
    """``e`` as JSON ``{"error": {"code", "message"}}`` with its status (and ``Retry-After``)."""
    headers = {"Retry-After": str(math.ceil(e.retry_after))} if e.retry_after else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)


def create_app(
    backend: Backend,
    settings: ServeSettings,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 16 * 2**20,
    batch_ms: dict | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ASGI app serving ``backend``; the batcher starts with the app and drains on shutdown.

    Example:
        >>> app = create_app(ServedModel.load("runs/demo"), ServeSettings(slo_ms=50))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    routes = Routes(backend, settings, max_body_bytes=max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(backend, settings, hooks=routes.metrics, batch_ms=batch_ms, clock=clock)
        await batcher.start()
        routes.state["batcher"] = app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.drain()

    app = FastAPI(
        title="snnet serve",
        description="One stitchable network that holds a latency target by switching stitches.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    routes.install(app)
    app.add_middleware(
        Gate,
        api_key=api_key,
        admit=routes.admit,
        state=routes.state,
        clock=clock,
        predict=routes.predict_asgi,
    )
    return app


class Routes:
    """The endpoints of one replica's app, over its batcher once the app has started."""

    def __init__(
        self, backend: Backend, settings: ServeSettings, *, max_body_bytes: int = 16 * 2**20
    ) -> None:
        self.backend, self.settings, self.max_body_bytes = backend, settings, max_body_bytes
        self.state: dict[str, Any] = {"batcher": None, "inflight": 0}  # shared with the Gate
        self.metrics = Metrics(lambda: self.state["batcher"].queue_depth if self.ready else 0)

    @property
    def ready(self) -> bool:
        return self.state["batcher"] is not None

    def batcher(self) -> Batcher:
        if not self.ready:
            raise ServeError(503, "not_ready", "the model is still loading", retry_after=1)
        return self.state["batcher"]

    def install(self, app: FastAPI) -> None:
        app.add_exception_handler(ServeError, self.serve_error)
        app.add_exception_handler(HTTPException, http_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        route = app.add_api_route
        route(
            "/v1/predict", self.predict, methods=["POST"], summary="Classify one or several images"
        )
        route(
            "/v1/stitches",
            self.stitches,
            methods=["GET"],
            summary="The Pareto front of latency against top-1, and all stitches",
        )
        route(
            "/v1/stitch",
            self.set_stitch,
            methods=["PUT"],
            summary="Set the stitch a server without an SLO runs",
        )
        route(
            "/v1/status",
            self.status,
            methods=["GET"],
            summary="Current stitch, SLO, recent latency, queue and load",
        )
        route("/healthz", healthz, methods=["GET"], summary="The process answers")
        route(
            "/readyz",
            self.readyz,
            methods=["GET"],
            summary="Ready for traffic: model loaded, not draining",
        )
        route("/metrics", self.prometheus, methods=["GET"], summary="Prometheus metrics")
        route("/", page, methods=["GET"], include_in_schema=False)
        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    async def serve_error(self, request: Request, e: ServeError) -> JSONResponse:
        self.count(e)
        return error_response(e)

    def count(self, e: ServeError) -> None:
        if 400 <= e.status < 500:
            self.metrics.errors.labels(e.code).inc()

    def admit(self) -> ServeError | None:
        """Refuse a prediction before reading it when the server already holds as many as it
        can answer in time (:func:`~snnet.serve.admission.inflight_limit`): under overload the
        backlog would otherwise wait in the HTTP layer, unseen by the queue bound."""
        b = self.state["batcher"]
        if b is not None and self.state["inflight"] >= b.inflight_limit():
            b.refuse("overload")
            return ServeError(
                503, "overloaded", "too many requests in flight: retry later", retry_after=1
            )
        return None

    async def predict(self, request: Request) -> dict[str, Any]:
        """Body: one image (``Content-Type: image/png``, ``image/jpeg``, ...) or
        ``multipart/form-data`` with files in any field (``image``/``images``). Options as query
        or form fields: ``stitch``, ``max_gmacs``, ``max_latency_ms``, ``top_k``."""
        b = self.batcher()
        arrived = request.scope.get(ARRIVED, b.clock())
        req = await read_request(request, self.settings)
        want = b.resolve(req.stitch, req.max_gmacs, req.max_latency_ms)
        preds = await b.submit(await decode_request(self.backend, req, self.settings), want)
        return answer(self.backend, preds, req.top_k, lambda: b.finish(preds, arrived))

    async def predict_asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/predict`` as plain ASGI (what the Gate calls): :meth:`predict` without
        the framework's routing, middleware and response objects; errors as JSON."""
        try:
            length = content_length(scope)
            if length is not None and length > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            request = Request(scope, limited(receive, self.max_body_bytes))
            body = await self.predict(request)
        except ServeError as e:
            self.count(e)
            return await send_error(send, e)
        except ClientDisconnect:
            return None
        except Exception as e:  # an answer for every request, even a bug's
            logger.exception("prediction failed")
            error = ServeError(500, "internal_error", f"{type(e).__name__}: {e}")
            return await send_error(send, error)
        await send_json(send, 200, body)

    async def stitches(self) -> dict[str, Any]:
        m = self.backend
        front = {r.stitch for r in m.front}
        rows = sorted(m.results, key=lambda r: (r.latency_ms or 0, r.gmacs))
        return {
            "current": str(self.batcher().stitch),
            "front": [{**r.to_json(), "describe": m.describe(r.stitch)} for r in m.front],
            "stitches": [{**r.to_json(), "pareto": r.stitch in front} for r in rows],
            "source": m.source,
            "preprocess": m.preprocess_json(),
            "classes": list(m.classes),
            "metric": m.results.metric,  # what the front ranks: top1, miou or absrel
        }

    async def set_stitch(self, request: Request) -> dict[str, Any]:
        """Body ``{"stitch": "0:5-1:6"}``: a value swap, no weights move. Refused (409) when
        the server follows an SLO, since the controller owns the choice then."""
        b = self.batcher()
        try:
            body = await request.json()
            text = body["stitch"]
        except (ValueError, KeyError, TypeError):
            raise ServeError(400, "bad_request", 'send JSON {"stitch": "..."}') from None
        if self.settings.slo_ms is not None:
            raise ServeError(409, "slo_mode", "the SLO controller chooses the stitch here")
        b.executor.set_stitch(b.resolve(text).stitch)
        return {"stitch": str(b.stitch)}

    async def status(self) -> dict[str, Any]:
        return self.batcher().status()

    async def readyz(self, request: Request) -> JSONResponse:
        b = self.state["batcher"]
        if b is None or b.draining or getattr(request.app.state, "shutting_down", False):
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "stitch": str(b.stitch)})

    async def prometheus(self) -> Response:
        body = self.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def http_error(request: Request, e: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(e.detail)}}, status_code=e.status_code
    )


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "bad_request", "message": str(e.errors())}}, status_code=422
    )


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"))
