"""A prediction request's path: read, decode, queue, answer, as plain ASGI.

``POST /v1/predict`` is the one endpoint whose cost is paid per image, so it runs on the ASGI
protocol directly: the outermost layer (``app.Gate``) hands it the request before any framework
routing, middleware or response object, and it answers with JSON bytes encoded by orjson. Its
parser (:func:`read_request`) and answer (:func:`answer`) are also what the Ray deployment uses.

Small images are decoded on the event loop (a 28×28 PNG costs tens of microseconds, less than
a hand-over to a thread); a request whose images are larger than :data:`INLINE_DECODE_BYTES`
is decoded on a thread, so the loop keeps reading other requests meanwhile (PIL releases the
GIL while it decodes).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from snnet.serve.backend import Backend
from snnet.serve.errors import ServeError
from snnet.serve.executor import Prediction, stitch_name
from snnet.serve.images import decode_image
from snnet.serve.settings import ServeSettings

IMAGE_TYPES = ("image/", "application/octet-stream")
#: Bytes of encoded images a request may hold and still be decoded on the event loop.
INLINE_DECODE_BYTES = 64 * 1024
JSON_HEADERS = [(b"content-type", b"application/json")]


def _number(query: dict[str, str], form: dict[str, Any], key: str, cast: type = float) -> Any:
    raw = form.get(key, query.get(key))
    if raw is None or raw == "":
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise ServeError(400, "bad_parameter", f"{key} must be a number, got {raw!r}") from None
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ServeError(400, "bad_parameter", f"{key} must be a positive number, got {raw!r}")
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
    query = request.query_params
    return PredictRequest(
        images=blobs,
        stitch=form.get("stitch", query.get("stitch")),
        max_gmacs=_number(query, form, "max_gmacs"),
        max_latency_ms=_number(query, form, "max_latency_ms"),
        top_k=_number(query, form, "top_k", int) or settings.top_k,
    )


def decode_all(backend: Backend, blobs: list[bytes], settings: ServeSettings) -> list[Any]:
    """Each image of a request decoded and made the backend's input (4xx if one is bad)."""
    return [backend.pixels(decode_image(b, max_pixels=settings.max_pixels)) for b in blobs]


async def decode_request(backend: Backend, req: PredictRequest, settings: ServeSettings) -> list:
    """:func:`decode_all`, on a thread when the images are larger than
    :data:`INLINE_DECODE_BYTES`."""
    if sum(len(b) for b in req.images) <= INLINE_DECODE_BYTES:
        return decode_all(backend, req.images, settings)
    return await asyncio.to_thread(decode_all, backend, req.images, settings)


def answer(
    backend: Backend,
    preds: list[Prediction],
    top_k: int,
    latency_ms: Callable[[], float],
) -> dict[str, Any]:
    """The JSON answer: top-k classes per image (a dense network: its map), the stitch that
    ran and the latency (``latency_ms()`` is called last, once the rest of the answer is
    built)."""
    answers = backend.answers([p.probs for p in preds], top_k)
    stitches = {stitch_name(p.stitch) for p in preds}
    body = {
        "stitch": stitches.pop() if len(stitches) == 1 else None,
        "latency_ms": None,
        "predictions": [
            {
                **fields,
                "stitch": stitch_name(p.stitch),
                "batch_size": p.batch_size,
                "queue_ms": round(p.queue_ms, 3),
                "compute_ms": round(p.compute_ms, 3),
            }
            for fields, p in zip(answers, preds, strict=True)
        ],
    }
    body["latency_ms"] = round(latency_ms(), 3)
    return body


async def send_json(send: Send, status: int, body: Any, headers: list | None = None) -> None:
    """One whole HTTP response of JSON ``body`` (orjson) with ``status``."""
    data = orjson.dumps(body)
    head = [*JSON_HEADERS, (b"content-length", str(len(data)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, e: ServeError) -> None:
    """``e`` as JSON ``{"error": {"code", "message"}}`` with its status (and ``Retry-After``)."""
    headers = [(b"retry-after", str(math.ceil(e.retry_after)).encode())] if e.retry_after else []
    await send_json(send, e.status, e.to_json(), headers)


def limited(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises a 413 :class:`ServeError` once the body exceeds ``max_bytes``."""
    seen = 0

    async def receive_limited():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise too_large(max_bytes)
        return message

    return receive_limited


def too_large(max_bytes: int) -> ServeError:
    return ServeError(413, "body_too_large", f"the request body exceeds {max_bytes:,} bytes")


def content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None
