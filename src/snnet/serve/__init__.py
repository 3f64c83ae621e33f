"""``snnet serve``: one stitchable network behind HTTP that holds a latency SLO by switching
stitches.

``settings`` defines how a replica serves; ``backend`` is what the core asks of the runtime that
computes the network, and ``model`` the torch backend (the one module here that imports torch);
``executor`` runs a replica's batches and ``batcher`` forms them; ``app`` is the FastAPI face,
``metrics`` its Prometheus metrics, and ``ray`` the Ray Serve deployment of the same core. The
names below load on first use, so that ``snnet serve --help`` imports neither torch nor FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

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
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'snnet.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
