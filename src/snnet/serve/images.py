"""Decoding the images a request carries, with a clear error for each way they can be bad."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from snnet.serve.errors import ServeError


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode PNG/JPEG/... bytes fully, or raise :class:`ServeError` naming the problem.

    Example:
        >>> img = decode_image(open("shirt.png", "rb").read(), max_pixels=4096 * 4096)
    """
    if not data:
        raise ServeError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ServeError(413, "image_too_large", str(e)) from None
    except (UnidentifiedImageError, OSError):
        raise ServeError(
            400, "not_an_image", "the data is not an image PIL can read (PNG, JPEG, ...)"
        ) from None
    if img.width * img.height > max_pixels:
        raise ServeError(
            413,
            "image_too_large",
            f"the image is {img.width}×{img.height} pixels; at most {max_pixels:,} are accepted",
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ServeError(400, "truncated_image", f"the image could not be decoded: {e}") from None
    return img
