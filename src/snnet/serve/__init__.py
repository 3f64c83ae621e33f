"""``snnet serve``: one stitchable network behind HTTP that holds a latency SLO by switching
stitches.

``settings`` defines how a replica serves; ``backend`` is what the core asks of the runtime that
computes the network, and ``model`` the torch backend (the one module here that imports torch);
``executor`` runs a replica's batches and ``batcher`` forms them; ``app`` is the FastAPI face,
``metrics`` its Prometheus metrics, and ``ray`` the Ray Serve deployment of the same core. The
names below load on first use, so that ``snnet serve --help`` imports neither torch nor FastAPI.
"""

from __future__ import annotations

from snnet.lazy import lazy_exports

_PUBLIC = {
    "snnet.serve.backend": ("Backend", "load_backend"),
    "snnet.serve.batcher": ("Batcher",),
    "snnet.serve.errors": ("ServeError",),
    "snnet.serve.executor": ("BatchExecutor", "Prediction"),
    "snnet.serve.images": ("decode_image",),
    "snnet.serve.model": ("Preprocess", "ServedModel", "preprocessing"),
    "snnet.serve.settings": ("ServeSettings",),
    "snnet.serve.want": ("Want",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
