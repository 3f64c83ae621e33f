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
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snnet.serve.backend import Backend
from snnet.serve.batcher import Batcher
from snnet.serve.errors import ServeError
from snnet.serve.executor import Prediction
from snnet.serve.images import decode_image
from snnet.serve.metrics import Metrics
from snnet.serve.settings import ServeSettings

STATIC = resources.files("snnet.serve") / "static"
IMAGE_TYPES = ("image/", "application/octet-stream")
ARRIVED = "snnet.arrived"  # scope key: clock reading when a request reached the app


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before reading them whole: by the
    Content-Length header when there is one, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ServeError(
            413, "body_too_large", f"the request body exceeds {self.max_bytes:,} bytes"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, too_big)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_big
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ServeError as e:
            if e is not too_big or started:
                raise
            await _send_error(send, e)


class Gate:
    """The outermost layer: stamps each request's arrival (``scope[ARRIVED]``, from ``clock``),
    then checks before a request is read: the API key (for ``/v1/*`` and ``/metrics``), and
    admission of predictions (``admit`` returns the refusal, or None); counts predictions in
    flight in ``state["inflight"]``. Plain ASGI, so a refusal costs no body read and no
    framework machinery."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        admit,
        state: dict[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.state, self.admit, self.clock = app, state, admit, clock
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = self.clock()
        path = scope["path"]
        if self.expected and (path.startswith("/v1/") or path == "/metrics"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return await _send_error(
                    send,
                    ServeError(
                        401, "unauthorized", "send the API key as 'Authorization: Bearer KEY'"
                    ),
                )
        if path != "/v1/predict":
            return await self.app(scope, receive, send)
        refusal = self.admit()
        if refusal is not None:
            return await _send_error(send, refusal)
        self.state["inflight"] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state["inflight"] -= 1


async def _send_error(send: Send, e: ServeError) -> None:
    response = error_response(e)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def error_response(e: ServeError) -> JSONResponse:
    """``e`` as JSON ``{"error": {"code", "message"}}`` with its status (and ``Retry-After``)."""
    headers = {"Retry-After": str(math.ceil(e.retry_after))} if e.retry_after else None
    return JSONResponse(e.to_json(), status_code=e.status, headers=headers)


def _number(request: Request, form: dict[str, Any], name: str, cast: type = float) -> Any:
    raw = form.get(name, request.query_params.get(name))
    if raw is None or raw == "":
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise ServeError(400, "bad_parameter", f"{name} must be a number, got {raw!r}") from None
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ServeError(400, "bad_parameter", f"{name} must be a positive number, got {raw!r}")
    return value


@dataclass(frozen=True)
class PredictRequest:
    """What a ``POST /v1/predict`` asks, read and checked (images still encoded)."""

    images: list[bytes]
    stitch: str | None
    max_gmacs: float | None
    max_latency_ms: float | None
    top_k: int


async def read_request(request: Request, settings: ServeSettings) -> PredictRequest:
    """Read one image (``Content-Type: image/...``) or ``multipart/form-data`` files, and the
    options from the query or form fields; a 4xx :class:`ServeError` names what is wrong."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form: dict[str, Any] = {}
    if ctype.startswith(IMAGE_TYPES):
        blobs = [await request.body()]
    elif ctype == "multipart/form-data":
        try:
            parsed = await request.form(max_files=settings.max_images, max_fields=32)
        except (MultiPartException, HTTPException) as e:  # Starlette wraps the former
            if "files" in str(getattr(e, "detail", e)):
                raise ServeError(
                    413, "too_many_images", f"at most {settings.max_images} images per request"
                ) from None
            raise ServeError(400, "bad_multipart", str(getattr(e, "detail", e))) from None
        blobs = [await v.read() for _, v in parsed.multi_items() if not isinstance(v, str)]
        form = {k: v for k, v in parsed.items() if isinstance(v, str)}
    else:
        raise ServeError(
            415,
            "unsupported_media_type",
            f"send an image (image/png, image/jpeg, ...) or multipart/form-data, not {ctype!r}",
        )
    if not blobs:
        raise ServeError(400, "no_image", "the request holds no image")
    if len(blobs) > settings.max_images:
        raise ServeError(
            413, "too_many_images", f"{len(blobs)} images; at most {settings.max_images}"
        )
    return PredictRequest(
        images=blobs,
        stitch=form.get("stitch", request.query_params.get("stitch")),
        max_gmacs=_number(request, form, "max_gmacs"),
        max_latency_ms=_number(request, form, "max_latency_ms"),
        top_k=_number(request, form, "top_k", int) or settings.top_k,
    )


def answer(
    backend: Backend,
    preds: list[Prediction],
    top_k: int,
    latency_ms: Callable[[], float],
) -> dict[str, Any]:
    """The JSON answer: top-k classes per image, the stitch that ran and the latency
    (``latency_ms()`` is called last, once the rest of the answer is built)."""
    tops = backend.top_k([p.probs for p in preds], top_k)
    stitches = {str(p.stitch) for p in preds}
    body = {
        "stitch": stitches.pop() if len(stitches) == 1 else None,
        "latency_ms": None,
        "predictions": [
            {
                "top": top,
                "stitch": str(p.stitch),
                "batch_size": p.batch_size,
                "queue_ms": round(p.queue_ms, 3),
                "compute_ms": round(p.compute_ms, 3),
            }
            for top, p in zip(tops, preds, strict=True)
        ],
    }
    body["latency_ms"] = round(latency_ms(), 3)
    return body


def decode_all(backend: Backend, blobs: list[bytes], settings: ServeSettings) -> list[Any]:
    """Each image of a request decoded and made the backend's input (4xx if one is bad)."""
    return [backend.pixels(decode_image(b, max_pixels=settings.max_pixels)) for b in blobs]


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
    routes = Routes(backend, settings)

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
    app.add_middleware(Gate, api_key=api_key, admit=routes.admit, state=routes.state, clock=clock)
    return app


class Routes:
    """The endpoints of one replica's app, over its batcher once the app has started."""

    def __init__(self, backend: Backend, settings: ServeSettings) -> None:
        self.backend, self.settings = backend, settings
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
        if 400 <= e.status < 500:
            self.metrics.errors.labels(e.code).inc()
        return error_response(e)

    def admit(self) -> ServeError | None:
        """Refuse a prediction before reading it when the server already holds as many as its
        queue takes plus two batches in flight: under overload the backlog would otherwise wait
        in the HTTP layer, unseen by the queue bound."""
        b = self.state["batcher"]
        if b is not None and self.state["inflight"] >= b.max_queue() + 2 * self.settings.max_batch:
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
        preds = await b.submit(decode_all(self.backend, req.images, self.settings), want)
        return answer(self.backend, preds, req.top_k, lambda: b.finish(preds, arrived))

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
