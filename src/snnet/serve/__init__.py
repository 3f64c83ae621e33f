"""``snnet serve``: one stitchable network behind HTTP that holds a latency SLO by switching
stitches. ``model`` loads a run, ``batcher`` forms micro-batches and asks the controller for the
stitch, ``app`` is the FastAPI face, ``ray`` the Ray Serve deployment of the same core."""

from snnet.serve.batcher import Batcher, Prediction, ServeSettings, Want
from snnet.serve.model import Preprocess, ServedModel, ServeError, decode_image, preprocessing

__all__ = [
    "Batcher",
    "Prediction",
    "Preprocess",
    "ServeError",
    "ServeSettings",
    "ServedModel",
    "Want",
    "decode_image",
    "preprocessing",
]
