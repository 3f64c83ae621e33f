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

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snnet.serve.batcher import Batcher, Prediction, ServeSettings
from snnet.serve.metrics import Metrics
from snnet.serve.model import ServedModel, ServeError, decode_image

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
    response = _error_response(e)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def _error_response(e: ServeError) -> JSONResponse:
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
    model: ServedModel, preds: list[Prediction], top_k: int, latency_ms: Callable[[], float]
) -> dict[str, Any]:
    """The JSON answer: top-k classes per image, the stitch that ran and the latency
    (``latency_ms()`` is called last, once the rest of the answer is built)."""
    tops = model.top_k(torch.stack([p.probs for p in preds]), top_k)
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


def create_app(
    model: ServedModel,
    settings: ServeSettings,
    *,
    api_key: str | None = None,
    max_body_bytes: int = 16 * 2**20,
    batch_ms: dict | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ASGI app serving ``model``; the batcher starts with the app and drains on shutdown.

    Example:
        >>> app = create_app(ServedModel.load("runs/demo"), ServeSettings(slo_ms=50))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    state: dict[str, Any] = {"batcher": None}
    metrics = Metrics(lambda: state["batcher"].queue_depth if state["batcher"] else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(model, settings, hooks=metrics, batch_ms=batch_ms, clock=clock)
        await batcher.start()
        state["batcher"] = app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.drain()

    app = FastAPI(
        title="snnet serve",
        description="One stitchable network that holds a latency target by switching stitches.",
        lifespan=lifespan,
    )
    app.state.model = model
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def batcher() -> Batcher:
        if state["batcher"] is None:
            raise ServeError(503, "not_ready", "the model is still loading", retry_after=1)
        return state["batcher"]

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError) -> JSONResponse:
        if 400 <= e.status < 500:
            metrics.errors.labels(e.code).inc()
        return _error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(e.detail)}}, status_code=e.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": "bad_request", "message": str(e.errors())}}, status_code=422
        )

    def admit() -> ServeError | None:
        """Refuse a prediction before reading it when the server already holds as many as its
        queue takes plus two batches in flight: under overload the backlog would otherwise wait
        in the HTTP layer, unseen by the queue bound."""
        b = state["batcher"]
        if b is not None and state["inflight"] >= b.max_queue() + 2 * settings.max_batch:
            b._refuse("overload")
            return ServeError(
                503, "overloaded", "too many requests in flight: retry later", retry_after=1
            )
        return None

    state["inflight"] = 0
    app.add_middleware(Gate, api_key=api_key, admit=admit, state=state, clock=clock)

    @app.post("/v1/predict", summary="Classify one or several images")
    async def predict(request: Request) -> dict[str, Any]:
        """Body: one image (``Content-Type: image/png``, ``image/jpeg``, ...) or
        ``multipart/form-data`` with files in any field (``image``/``images``). Options as query
        or form fields: ``stitch``, ``max_gmacs``, ``max_latency_ms``, ``top_k``."""
        b = batcher()
        arrived = request.scope.get(ARRIVED, b.clock())
        req = await read_request(request, settings)
        want = b.resolve(req.stitch, req.max_gmacs, req.max_latency_ms)
        xs = [
            model.preprocess.pixels(decode_image(blob, max_pixels=settings.max_pixels))
            for blob in req.images
        ]
        preds = await b.submit(xs, want)
        return answer(model, preds, req.top_k, lambda: b.finish(preds, arrived))

    @app.get("/v1/stitches", summary="The Pareto front of latency against top-1, and all stitches")
    async def stitches() -> dict[str, Any]:
        front = {r.stitch for r in model.front}
        rows = sorted(model.results, key=lambda r: (r.latency_ms or 0, r.gmacs))
        return {
            "current": str(model.net.stitch),
            "front": [
                {**r.to_json(), "describe": model.net.describe(r.stitch)} for r in model.front
            ],
            "stitches": [{**r.to_json(), "pareto": r.stitch in front} for r in rows],
            "source": model.source,
            "preprocess": model.preprocess.to_json(),
            "classes": list(model.classes),
        }

    @app.put("/v1/stitch", summary="Set the stitch a server without an SLO runs")
    async def set_stitch(request: Request) -> dict[str, Any]:
        """Body ``{"stitch": "0:5-1:6"}``: a value swap, no weights move. Refused (409) when
        the server follows an SLO, since the controller owns the choice then."""
        b = batcher()
        try:
            body = await request.json()
            text = body["stitch"]
        except (ValueError, KeyError, TypeError):
            raise ServeError(400, "bad_request", 'send JSON {"stitch": "..."}') from None
        if settings.slo_ms is not None:
            raise ServeError(409, "slo_mode", "the SLO controller chooses the stitch here")
        want = b.resolve(text)
        model.net.stitch = want.stitch
        return {"stitch": str(model.net.stitch)}

    @app.get("/v1/status", summary="Current stitch, SLO, recent latency, queue and load")
    async def status() -> dict[str, Any]:
        return batcher().status()

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready for traffic: model loaded, not draining")
    async def readyz() -> JSONResponse:
        b = state["batcher"]
        if b is None or b.draining or getattr(app.state, "shutting_down", False):
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "stitch": str(model.net.stitch)})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
