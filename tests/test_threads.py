import os
import sys
from pathlib import Path

import pytest
import torch

from snnet.threads import default_threads, set_threads


def test_set_threads_sets_torch_threads_and_refuses_nonsense():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == 1  # None keeps the count
        with pytest.raises(ValueError, match="--threads must be at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_default_threads_is_omp_num_threads_or_half_the_usable_cores(monkeypatch):
    import snnet.threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    for cores, expected in ((1, 1), (2, 1), (3, 1), (16, 8)):
        monkeypatch.setattr(snnet.threads, "usable_cores", lambda c=cores: c)
        assert default_threads() == expected


def test_every_computing_command_defaults_to_snnets_thread_count(monkeypatch):
    from snnet.cli import build_parser

    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # a value no machine default gives here
    for name in ("train", "evaluate", "demo", "latency"):
        sub = build_parser(name)._subparsers._group_actions[0].choices[name]
        threads = next(a for a in sub._actions if a.dest == "threads")
        assert threads.default == 5, name


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_makes_openmp_wait_passively_before_torch_loads(preset, expected):
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset  # the user's choice wins
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    code = "import os, sys, snnet.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [expected, "False"], out.stderr


def _train_cli(out, threads: int) -> dict[str, torch.Tensor]:
    """``snnet train`` on the demo family for a few steps in a fresh process (the thread
    settings of a real command), and the weights it saved."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(root / "src")
    args = ["fmnist", "--out", str(out), "--steps", "8", "--ls-init", "64", "--quiet"]
    args += ["--lr", "2e-3", "--anchor-lr-scale", "0.2", "--threads", str(threads)]
    subprocess.run([sys.executable, "-m", "snnet", "train", *args], env=env, check=True)
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_training_beside_a_cpu_hog_gives_the_weights_of_an_idle_run(threads, tmp_path):
    import subprocess

    idle = _train_cli(tmp_path / "idle", threads)
    # one busy loop: beside the training's own threads and the other test process, a core short
    hogs = [subprocess.Popen(["bash", "-c", "while :; do :; done"])]
    try:
        busy = _train_cli(tmp_path / "busy", threads)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert idle.keys() == busy.keys()
    differ = [k for k in idle if not torch.equal(idle[k], busy[k])]
    assert not differ, f"{len(differ)} of {len(idle)} tensors differ, e.g. {differ[:3]}"


FAULTS = """
import resource, sys, torch
how = sys.argv[1]
if how == "api":
    from snnet.threads import keep_freed_memory
    assert keep_freed_memory()
if how == "cli":
    import snnet.cli  # noqa: F401  (every command applies it on import)
torch.set_num_threads(1)
layers = [(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)) for _ in range(12)]
net = torch.nn.Sequential(*[m for block in layers for m in block])
x = torch.randn(2176, 32)  # activations of 0.3-1.1 MB, as in a demo training step
net(x).square().mean().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
    net(x).square().mean().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunables")
@pytest.mark.parametrize("how", ["default", "api", "cli"])
def test_freed_tensor_memory_is_reused_not_faulted_in_again(how):
    """Without keep_freed_memory, 60 small training steps fault tens of thousands of fresh pages
    in (glibc hands freed activations back to the OS); with it, or under any command, a few."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, how], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    faults = int(done.stdout.split()[-1])
    if how == "default":
        assert faults > 40_000, faults  # what the setting is there to remove
    else:
        assert faults < 10_000, faults


def test_a_users_malloc_settings_win(monkeypatch):
    from snnet.threads import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
