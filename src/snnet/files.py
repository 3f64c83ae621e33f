"""Files snnet writes: their names, atomic writes, and the one reader of snnet's JSON headers.

Every file snnet writes goes through :func:`atomic_write` (a temp file beside the target, fsync,
rename), so a crash or a kill leaves the old file or the new one, never half of either. Every JSON
file snnet reads back starts with ``{"format": ..., "version": ...}`` and is read by
:func:`read_json_config`.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: A saved network or exported stitch: its JSON config and its safetensors weights.
CONFIG, WEIGHTS = "config.json", "model.safetensors"


def atomic_write(path: str | Path, write: Any, *, mode: str = "w") -> None:
    """Write through ``write(file_or_path)`` into a temp file beside ``path``, then rename: a crash
    leaves the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode == "path":
            os.close(fd)
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename, even across a power cut
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> Path:
    """Raise now the ``OSError`` that writing ``path`` with :func:`atomic_write` would raise later
    (a file where a folder should be, a folder where the file should be, a folder that refuses
    new files), so that a long run fails before it starts, not after. Creates nothing.

    Example:
        >>> check_writable("runs/deit/results.json")   # before an hour of evaluation
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    folder = path.parent
    while not folder.exists():  # atomic_write creates the missing folders inside this one
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    try:  # what atomic_write does there first
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as e:
        raise PermissionError(errno.EACCES, "Permission denied", str(folder)) from e
    os.close(fd)
    os.unlink(tmp)
    return path


def read_json_config(
    path: Path,
    fmt: str,
    version: int,
    *,
    what: str,
    hints: dict[str, str] | None = None,
    fix: str = "",
) -> dict[str, Any]:
    """Read a JSON config of format ``fmt`` written by this or an older snnet, or explain why not
    (``hints`` maps other formats to advice; ``fix``, if given, ends the message of a file that is
    not JSON or not of format ``fmt``)."""
    fix = f"; {fix}" if fix else ""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}){fix}") from e
    found = config.get("format") if isinstance(config, dict) else None
    if found != fmt:
        hint = (hints or {}).get(found, "")
        raise ValueError(f"{path} is not {what} (format={found!r}){hint}{fix}")
    if config.get("version", 0) > version:
        raise ValueError(
            f"{path} was written by a newer snnet (version {config['version']}); upgrade snnet"
        )
    return config
