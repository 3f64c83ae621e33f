"""Saving and loading networks and exported stitches: whole units, checked on load, clear errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import snnet
from families import vit_family
from snnet.cli import main
from snnet.export import export, export_stitch, load_stitch, save_stitch

KILLED = 77


def _net(seed: int, **options) -> snnet.SNNet:
    net = snnet.SNNet(vit_family(), **options).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _killed_at(k: int, save) -> bool:
    """Run ``save()`` in a forked child that dies (``os._exit``: no cleanup, like SIGKILL) just
    before its ``k``-th rename or unlink; True if it got that far."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        calls = 0

        def dying(real):
            def call(*args, **kwargs):
                nonlocal calls
                calls += 1
                if calls == k:
                    os._exit(KILLED)
                return real(*args, **kwargs)

            return call

        os.replace, os.rename, os.unlink = dying(os.replace), dying(os.rename), dying(os.unlink)
        try:
            save()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, KILLED), code
    return code == KILLED


def test_a_kill_at_any_point_of_a_save_leaves_the_old_network_or_the_new(tmp_path):
    # Different stitching options, so a config beside the other network's weights cannot load.
    old, new = _net(0), _net(1, kernel_size=3)
    assert sorted(old.layers) != sorted(new.layers)
    snnet.save(old, tmp_path / "template")
    seen = []
    for k in range(1, 50):
        target = tmp_path / f"k{k}"
        shutil.copytree(tmp_path / "template", target)
        killed = _killed_at(k, lambda target=target: snnet.save(new, target))
        loaded = snnet.load(target)
        assert _same(loaded, old) or _same(loaded, new), k
        seen.append("old" if _same(loaded, old) else "new")
        snnet.save(old, target)  # the next save over what the kill left works, and tidies up
        assert _same(snnet.load(target), old)
        assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
        if not killed:
            break
    else:
        pytest.fail("the save never finished")
    # Killed before the commit: the old network; after it (even before the weights were renamed
    # into place): the new one.
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, reverse=True)
    assert seen.count("new") >= 2, seen


def test_a_kill_at_any_point_of_an_export_leaves_one_whole_export(tmp_path):
    net = _net(0)
    first, second = export_stitch(net, "0"), export_stitch(net, "0:1-1:2")
    export(first, tmp_path / "template", ["safetensors", "pt2"])
    for k in range(1, 50):
        target = tmp_path / f"k{k}"
        shutil.copytree(tmp_path / "template", target)
        killed = _killed_at(k, lambda target=target: save_stitch(second, target))
        loaded = load_stitch(target)
        config = json.loads((target / "config.json").read_text())
        want = first if loaded.stitch == first.stitch else second
        x = torch.randn(2, *want.input_size)
        with torch.no_grad():
            assert torch.equal(loaded(x), want(x)), k
        assert loaded.info == want.info
        if loaded.stitch == second.stitch:  # a pt2 beside it would compute the first stitch
            assert set(config["sha256"]) == {"model.safetensors"}
        if not killed:
            break
    assert not (target / "model.pt2").exists()


@pytest.mark.slow
def test_a_save_killed_by_a_real_sigkill_leaves_a_whole_network(tmp_path):
    """SIGKILL at random moments while a child process saves two ~45 MB networks in turn."""
    child = textwrap.dedent(
        """
        import sys, torch, snnet
        def net(seed, **options):
            torch.manual_seed(seed)
            anchors = [
                snnet.timm_anchor("vit_tiny_patch16_224", img_size=64, num_classes=10)
                for _ in range(2)
            ]
            return snnet.SNNet(anchors, **options)
        nets = [net(0), net(1, kernel_size=3)]
        for name, n in zip("ab", nets):
            snnet.save(n, f"{sys.argv[1]}/{name}")  # the two networks, for comparison
        for i in range(10**6):
            snnet.save(nets[i % 2], f"{sys.argv[1]}/net")
            print(i, flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(snnet.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    g = torch.Generator().manual_seed(0)
    nets = None
    for attempt in range(3):
        shutil.rmtree(tmp_path / "net", ignore_errors=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "0"  # the loop has begun
            time.sleep(0.1 + 1.5 * torch.rand((), generator=g).item())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        nets = nets or [snnet.load(tmp_path / "a"), snnet.load(tmp_path / "b")]
        loaded = snnet.load(tmp_path / "net")
        assert any(_same(loaded, n) for n in nets), attempt


def test_weights_that_do_not_belong_to_their_config_are_refused(tmp_path):
    a, b = _net(0), _net(1)  # the same structure: only the recorded hash tells them apart
    snnet.save(a, tmp_path / "a")
    snnet.save(b, tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not match .*config\.json"):
        snnet.load(tmp_path / "a")
    save_stitch(export_stitch(a, "0"), tmp_path / "sa")
    save_stitch(export_stitch(b, "0"), tmp_path / "sb")
    shutil.copy(tmp_path / "sb" / "model.safetensors", tmp_path / "sa" / "model.safetensors")
    with pytest.raises(ValueError, match=r"does not match .*config\.json"):
        load_stitch(tmp_path / "sa")


def test_export_replaces_every_artefact_of_the_previous_export(tmp_path):
    net = _net(0)
    first, second = export_stitch(net, "0"), export_stitch(net, "0:1-1:2")
    export(first, tmp_path, ["safetensors", "pt2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.pt2",
        "model.safetensors",
    ]
    export(second, tmp_path, ["safetensors"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_stitch(tmp_path).stitch == second.stitch
    export(first, tmp_path, ["pt2"])  # no weights: loading says which files this export holds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pt2"]
    with pytest.raises(FileNotFoundError, match=r"holds no model\.safetensors .*model\.pt2"):
        load_stitch(tmp_path)


def test_an_export_never_replaces_a_saved_network(tmp_path):
    net = _net(0)
    snnet.save(net, tmp_path / "net")
    with pytest.raises(ValueError, match=r"format='snnet'.*choose another directory"):
        save_stitch(export_stitch(net, "0"), tmp_path / "net")
    assert _same(snnet.load(tmp_path / "net"), net)
    net_dir, stitch_dir, file = (str(tmp_path / n) for n in ("net", "stitch", "file"))
    assert main(["export", net_dir, "--stitch", "0", "--out", net_dir]) == 2
    assert _same(snnet.load(tmp_path / "net"), net)
    # The other way round, and a file where a directory belongs: refused, nothing replaced.
    save_stitch(export_stitch(net, "0"), stitch_dir)
    with pytest.raises(ValueError, match=r"exported stitch: load it with snnet\.load_stitch"):
        snnet.load(stitch_dir)
    with pytest.raises(ValueError, match=r"format='snnet-stitch'.*choose another directory"):
        snnet.save(net, stitch_dir)
    (tmp_path / "file").write_text("keep")
    assert main(["export", net_dir, "--stitch", "0", "--out", file]) == 2
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "not a complete safetensors file"),
        ("unhashed", "records no sha256"),
        ("config", "not valid JSON"),
        ("weights-missing", "incomplete"),
    ],
)
def test_damaged_files_are_one_line_errors_naming_the_fix(tmp_path, capsys, damage, message):
    snnet.save(_net(0), tmp_path / "net")
    weights, config = tmp_path / "net" / "model.safetensors", tmp_path / "net" / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
        message = "does not match"
    elif damage == "unhashed":  # files whose config records no sha256 are never loaded
        c = json.loads(config.read_text())
        del c["sha256"]
        config.write_text(json.dumps(c))
    elif damage == "config":
        config.write_text('{"format": "snnet", "anch')
    else:
        weights.unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        snnet.load(tmp_path / "net")
    out = tmp_path / "out"
    assert main(["export", str(tmp_path / "net"), "--stitch", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "again" in err, err  # names the fix
    assert not out.exists()
