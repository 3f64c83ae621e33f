"""Files snnet writes: their names, atomic writes, saves of several files as one unit, and the one
reader of snnet's JSON headers.

Every file snnet writes goes through :func:`atomic_write` (a temp file beside the target, fsync,
rename), so a crash or a kill leaves the old file or the new one, never half of either. Files
that belong together (a network's ``config.json`` and ``model.safetensors``; an export's config
and its artefacts) are written by :func:`save_unit`: the artefacts first, under pending names,
then the config, which records each artefact's sha256. Renaming the config into place is the
one commit point: before it the old unit is intact, after it the new one is complete (a reader
finishes an interrupted save by renaming the pending files in, see :func:`unit_file`), and an
artefact that does not match its config is refused instead of loaded.

Temp and pending names carry the writer's process id, so orphans of killed writes are recognised
and removed the next time snnet writes into that directory (:func:`tidy`); files a committed
config still needs are finished, never removed. Outputs get the usual permissions
(``0o666`` less the umask), like any file the user creates.

Every JSON file snnet reads back starts with ``{"format": ..., "version": ...}`` and is read by
:func:`read_json_config`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: A saved network or exported stitch: its JSON config and its safetensors weights.
CONFIG, WEIGHTS = "config.json", "model.safetensors"
#: An exported stitch's other formats, and every format `snnet export` writes.
ONNX, PT2 = "model.onnx", "model.pt2"
FORMATS = ("safetensors", "onnx", "pt2")
#: The config key mapping each artefact of a unit to its sha256 (hex).
HASHES = "sha256"

# ".NAME.snnet<pid>-<hex>.tmp": a write in progress (or killed); ".NAME.<sha256>.snnet<pid>.pending":
# an artefact written by save_unit, waiting for its config to commit and for the rename into place.
_TEMP = re.compile(r"^\.(?P<name>.+)\.snnet(?P<pid>\d+)-[0-9a-f]+\.tmp$")
_PENDING = re.compile(r"^\.(?P<name>.+)\.(?P<sha>[0-9a-f]{64})\.snnet(?P<pid>\d+)\.pending$")

Writer = Callable[[str], Any]


def atomic_write(path: str | Path, write: Any, *, mode: str = "w") -> None:
    """Write through ``write(file_or_path)`` into a temp file beside ``path``, then rename: a crash
    leaves the old file or the new one, never half of either.

    ``mode`` opens the temp file (``"w"``, ``"wb"``) for ``write``; ``"path"`` hands ``write`` the
    temp file's path instead, for writers that open files themselves.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy(path.parent)
    tmp = _write_temp(path.parent, path.name, write, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_csv_rows(path: str | Path, columns: Iterable[str]) -> list[list[str]]:
    """The data rows of one of snnet's CSV logs (header skipped); a row of another width (a line
    cut short by a kill) is left out, and a missing file has no rows."""
    path, width = Path(path), len(tuple(columns))
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in list(csv.reader(f))[1:] if len(r) == width]


def rewrite_csv(path: str | Path, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Replace a CSV log by ``columns`` + ``rows`` at once: how a resumed run cuts a log back to
    its checkpoint's step."""
    atomic_write(path, lambda f: csv.writer(f).writerows([tuple(columns), *rows]))


def save_unit(
    directory: str | Path,
    config: dict[str, Any],
    files: dict[str, Writer],
    *,
    members: Iterable[str] = (),
) -> dict[str, Path]:
    """Write ``files`` (name -> ``write(path)``) and then ``directory/config.json`` as one unit.

    The config written is ``config`` plus ``{"sha256": {name: hex digest}}`` of the files.
    ``members`` names every file a unit of this kind may hold: those not written this time
    belonged to the previous unit and are removed, so nothing stale stays beside the new config.
    Returns the path of each file written.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file: give a directory to write into")
    directory.mkdir(parents=True, exist_ok=True)
    found = _format_of(directory / CONFIG)
    if found is not None and found != config.get("format"):
        raise ValueError(
            f"{directory} holds a {CONFIG} of another kind (format={found!r}) that writing "
            f"{config.get('format')!r} there would replace: choose another directory"
        )
    tidy(directory)
    pending: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    try:
        for name, write in files.items():
            tmp = _write_temp(directory, name, write, "path")
            try:
                hashes[name] = sha256_file(tmp)
                pending[name] = directory / f".{name}.{hashes[name]}.snnet{os.getpid()}.pending"
                os.replace(tmp, pending[name])
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        config = {**config, HASHES: hashes}
        _fsync_dir(directory)  # the pending files are on disk before the config names them
        atomic_write(directory / CONFIG, lambda f: json.dump(config, f, indent=2, sort_keys=True))
    except BaseException:
        for p in pending.values():
            p.unlink(missing_ok=True)
        raise
    # Committed. What follows only tidies: a reader finishes it if we are killed here.
    for name, p in pending.items():
        _rename_in(p, directory / name)
    for name in set(members) - set(pending):
        (directory / name).unlink(missing_ok=True)
    _fsync_dir(directory)
    return {name: directory / name for name in pending}


def unit_file(directory: str | Path, config: dict[str, Any], name: str) -> Path:
    """The file ``name`` of the unit whose config is ``config``, checked against the sha256 the
    config records.

    A save killed after its commit is finished here (or, in a read-only directory, read from
    where it waits); a file that does not match is a clear error, never loaded.
    """
    directory = Path(directory)
    path = directory / name
    hashes = config.get(HASHES)
    if not isinstance(hashes, dict):
        raise ValueError(
            f"{directory / CONFIG} records no sha256 of its files, so they cannot be checked: "
            "it was not written by snnet; save it again"
        )
    want = hashes.get(name)
    if want is None:
        raise FileNotFoundError(
            f"{directory} holds no {name} (it was written with {', '.join(sorted(hashes))})"
        )
    if path.is_file() and sha256_file(path) == want:
        return path
    waiting = sorted(directory.glob(f".{name}.{want}.snnet*.pending"))
    if waiting:
        try:
            _rename_in(waiting[0], path)
            _fsync_dir(directory)
            return path
        except PermissionError:  # a read-only directory: the committed file is the pending one
            return waiting[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the save in {directory} is incomplete; save it again"
        )
    raise ValueError(
        f"{path} does not match {directory / CONFIG} (its sha256 differs from the one recorded "
        "there): the file is damaged or comes from another save; save it again"
    )


def tidy(directory: str | Path) -> None:
    """Finish a save into ``directory`` that was killed after its commit, and remove the temp
    and pending files of writes that were killed before theirs."""
    directory = Path(directory)
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(".")]
    except FileNotFoundError:
        return
    temps = [(n, m) for n in names if (m := _TEMP.match(n) or _PENDING.match(n))]
    if not temps:
        return
    hashes = _committed_hashes(directory)
    for name, m in temps:
        path = directory / name
        if "sha" in m.groupdict() and hashes.get(m["name"]) == m["sha"]:
            _rename_in(path, directory / m["name"])  # committed: finish it
        elif not _alive(int(m["pid"])):
            path.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """The file's sha256 as hex, read in blocks (memory stays small for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


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
    probe = _temp_path(folder, path.name)
    try:  # what atomic_write does there first
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except PermissionError as e:
        raise PermissionError(errno.EACCES, "Permission denied", str(folder)) from e
    except OSError as e:  # a read-only file system, no space for even an empty file
        raise OSError(e.errno, e.strerror, str(folder)) from e
    os.close(fd)
    probe.unlink()
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
    """Read a JSON config of format ``fmt`` and a version up to ``version``, or explain why not
    (``hints`` maps other formats to advice; ``fix``, if given, ends the message of a file that is
    not JSON, not of format ``fmt`` or of no version)."""
    fix = f"; {fix}" if fix else ""
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}){fix or ': the file is damaged; write it again (or restore it)'}"
        ) from e
    found = config.get("format") if isinstance(config, dict) else None
    if found != fmt:
        hint = (hints or {}).get(found, "")
        raise ValueError(f"{path} is not {what} (format={found!r}){hint}{fix}")
    found_version = config.get("version")
    if not isinstance(found_version, int):
        raise ValueError(
            f"{path} records no version: it was not written by snnet{fix or '; write it again'}"
        )
    if found_version > version:
        raise ValueError(
            f"{path} was written by a newer snnet (version {config['version']}); upgrade snnet"
        )
    return config


def _temp_path(directory: Path, name: str) -> Path:
    """A fresh temp name beside ``directory/name``; the pid in it lets :func:`tidy` tell a live
    writer's file from an orphan."""
    return directory / f".{name}.snnet{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _write_temp(directory: Path, name: str, write: Any, mode: str) -> Path:
    """A new temp file beside ``directory/name`` holding what ``write`` wrote, on disk."""
    tmp = _temp_path(directory, name)
    # O_CREAT with 0o666: the kernel applies the umask, as for any file the user creates.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if mode == "path":
            given = os.fstat(fd).st_mode & 0o777
            os.close(fd)
            write(str(tmp))
            # a library may write the file anew with permissions of its own (safetensors: 0o600)
            os.chmod(tmp, given)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename, even across a power cut
    except BaseException as e:
        full = _disk_full(e, directory)  # before the temp file's space is given back
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise
    return tmp


def _disk_full(e: BaseException, directory: Path) -> OSError | None:
    """The one ``OSError`` (ENOSPC, naming the file) for a write that failed because the disk
    is full, whichever library raised it: ``torch.save`` and safetensors raise their own error
    types with the C library's message inside. None for any other failure."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(e.errno, os.strerror(e.errno), str(directory))
    text = str(e)
    said = "No space left on device" in text or "os error 28" in text or "code: 28" in text
    if isinstance(e, Exception) and (said or shutil.disk_usage(directory).free < 1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return None


def _rename_in(pending: Path, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # another process finished it first
        os.replace(pending, path)


def _committed_hashes(directory: Path) -> dict[str, str]:
    try:
        hashes = json.loads((directory / CONFIG).read_text()).get(HASHES)
    except (OSError, ValueError, AttributeError):
        return {}
    return hashes if isinstance(hashes, dict) else {}


def _format_of(path: Path) -> str | None:
    """The ``format`` of an existing JSON config (``""`` for JSON of no snnet format); None when
    there is none, or it is damaged beyond reading (then it may be replaced)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return str(config.get("format", "")) if isinstance(config, dict) else ""


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: never remove
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
