"""Writing files: atomic, with the user's permissions, orphans of killed writes cleaned, units whole."""

import json
import os
import subprocess
import sys

import pytest

from snnet.files import CONFIG, atomic_write, save_unit, sha256_file, unit_file


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def _writer(text: str):
    def write(path: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    return write


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def _safetensors(path: str) -> None:  # writes the file anew, 0o600 whatever the umask
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, path)


def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    for mask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        umask(mask)
        atomic_write(tmp_path / f"text{mask}", lambda f: f.write("x"))
        atomic_write(tmp_path / f"path{mask}", _writer(""), mode="path")
        atomic_write(tmp_path / f"st{mask}", _safetensors, mode="path")
        save_unit(tmp_path / f"unit{mask}", {"format": "t"}, {"a": _writer(""), "b": _safetensors})
        assert _mode(tmp_path / f"text{mask}") == want
        assert _mode(tmp_path / f"path{mask}") == want
        assert _mode(tmp_path / f"st{mask}") == want
        assert _mode(tmp_path / f"unit{mask}" / "a") == want
        assert _mode(tmp_path / f"unit{mask}" / "b") == want
        assert _mode(tmp_path / f"unit{mask}" / CONFIG) == want


def test_orphans_of_killed_writes_are_removed_when_writing_there(tmp_path):
    dead = _dead_pid()
    sha = "ab" * 32
    orphans = [
        f".results.json.snnet{dead}-0123abcd.tmp",  # killed atomic_write
        f".model.safetensors.{sha}.snnet{dead}.pending",  # killed before its config committed
    ]
    alive = [
        f".results.json.snnet{os.getpid()}-0123abcd.tmp",  # a write still in progress
        f".model.safetensors.{sha}.snnet{os.getppid()}.pending",
    ]
    for name in orphans + alive + ["notes.tmp", ".hidden"]:
        (tmp_path / name).write_text("x")
    atomic_write(tmp_path / "results.json", lambda f: f.write("{}"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*alive, "notes.tmp", ".hidden", "results.json"])


def test_a_committed_save_is_finished_not_removed(tmp_path):
    """A unit killed after its config was renamed in: its pending file is the committed weights."""
    save_unit(tmp_path, {"format": "t"}, {"w": _writer("old")})
    (tmp_path / "new").write_text("new")
    sha = sha256_file(tmp_path / "new")
    (tmp_path / "new").rename(tmp_path / f".w.{sha}.snnet{_dead_pid()}.pending")
    config = {"format": "t", "sha256": {"w": sha}}
    (tmp_path / CONFIG).write_text(json.dumps(config))
    assert (tmp_path / "w").read_text() == "old"
    # A reader finishes it ...
    assert unit_file(tmp_path, config, "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG, "w"]
    # ... and so does any write into the directory.
    (tmp_path / "w").rename(tmp_path / f".w.{sha}.snnet{_dead_pid()}.pending")
    atomic_write(tmp_path / "other.json", lambda f: f.write("{}"))
    assert (tmp_path / "w").read_text() == "new"


def test_a_unit_file_that_does_not_match_its_config_is_refused(tmp_path):
    save_unit(tmp_path, {"format": "t"}, {"w": _writer("mine")})
    config = json.loads((tmp_path / CONFIG).read_text())
    assert config["sha256"]["w"] == sha256_file(tmp_path / "w")
    (tmp_path / "w").write_text("another")
    with pytest.raises(ValueError, match=r"does not match .*config\.json.*save it again"):
        unit_file(tmp_path, config, "w")
    (tmp_path / "w").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        unit_file(tmp_path, config, "w")
    with pytest.raises(FileNotFoundError, match="holds no x"):
        unit_file(tmp_path, config, "x")


def test_a_unit_replaces_only_a_config_of_its_own_kind(tmp_path):
    (tmp_path / CONFIG).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"another kind .*'other'.*choose another directory"):
        save_unit(tmp_path, {"format": "t"}, {"w": _writer("")})
    assert json.loads((tmp_path / CONFIG).read_text()) == {"format": "other"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG]
    (tmp_path / CONFIG).write_text("{damaged")  # a damaged config of any kind may be replaced
    save_unit(tmp_path, {"format": "t"}, {"w": _writer("")})
    assert json.loads((tmp_path / CONFIG).read_text())["format"] == "t"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    atomic_write(tmp_path / "a.json", lambda f: f.write("old"))

    def fail(f):
        f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.json", fail)
    with pytest.raises(OSError, match="disk full"):
        save_unit(tmp_path, {"format": "t"}, {"a.json": lambda p: fail(open(p, "w"))})  # noqa: SIM115
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_a_committed_save_in_a_read_only_directory_is_read_where_it_waits(tmp_path, monkeypatch):
    save_unit(tmp_path, {"format": "t"}, {"w": _writer("old")})
    (tmp_path / "new").write_text("new")
    sha = sha256_file(tmp_path / "new")
    waiting = tmp_path / f".w.{sha}.snnet{_dead_pid()}.pending"
    (tmp_path / "new").rename(waiting)
    config = {"format": "t", "sha256": {"w": sha}}

    def read_only(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    assert unit_file(tmp_path, config, "w") == waiting
