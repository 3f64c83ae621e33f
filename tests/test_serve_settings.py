"""The serving settings are defined once (``ServeSettings``): every field reaches ``snnet
serve``'s options and Ray Serve's ``key=value`` settings, and the serving core imports no torch."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from snnet import settings as settings_options
from snnet.serve.settings import ServeSettings

SRC = Path(__file__).resolve().parents[1] / "src"

#: A value for every field, each different from its default (a new field must be added here).
SAMPLE = {
    "slo_ms": 50.0,
    "stitch": "0:5-1:6",
    "max_batch": 4,
    "max_wait_ms": 2.5,
    "threads": 2,
    "max_queue": 64,
    "max_images": 3,
    "max_pixels": 1000,
    "top_k": 2,
    "hold_s": 1.5,
    "device": "cuda:1",
    "trace": False,
}


def test_the_sample_sets_every_field_away_from_its_default():
    fields = dataclasses.fields(ServeSettings)
    assert [f.name for f in fields] == list(SAMPLE)
    for f in fields:
        assert SAMPLE[f.name] != f.default, f.name
        assert f.metadata["help"], f"{f.name} has no help text"


def _serve_parser():
    from snnet.cli import build_parser

    return build_parser("serve")._subparsers._group_actions[0].choices["serve"]


def test_every_setting_reaches_the_command_line():
    parser = _serve_parser()
    argv = ["RUN"]
    for o in settings_options.options(ServeSettings):
        action = next(a for a in parser._actions if a.dest == o.name)
        assert action.help and o.flag in action.option_strings, o.name
        value = SAMPLE[o.name]
        argv += [o.flag] if isinstance(value, bool) else [o.flag, str(value)]
    args = parser.parse_args(argv)
    assert settings_options.from_args(ServeSettings, args) == ServeSettings(**SAMPLE)
    defaults = parser.parse_args(["RUN"])
    assert settings_options.from_args(ServeSettings, defaults) == ServeSettings()


def test_every_setting_reaches_ray():
    pytest.importorskip("ray.serve")
    from snnet.serve.ray import split_args

    text = {k: str(v) for k, v in SAMPLE.items()}  # as `serve run ... key=value` gives them
    run, replicas, settings = split_args({"run": "runs/demo", "num_replicas": "2", **text})
    assert run == "runs/demo" and replicas == {"num_replicas": 2}
    assert ServeSettings(**settings) == ServeSettings(**SAMPLE)
    _, _, typed = split_args({"run": "r", **SAMPLE})  # from Python, values already typed
    assert ServeSettings(**typed) == ServeSettings(**SAMPLE)
    _, _, none = split_args({"run": "r", "slo_ms": "none", "trace": "yes"})
    assert none == {"slo_ms": None, "trace": True}
    with pytest.raises(ValueError, match=r"unknown setting 'slo'.*slo_ms.*num_replicas"):
        split_args({"run": "r", "slo": "50"})
    with pytest.raises(ValueError, match="max_batch='many'"):
        split_args({"run": "r", "max_batch": "many"})
    with pytest.raises(ValueError, match="trace='maybe'"):
        split_args({"run": "r", "trace": "maybe"})
    with pytest.raises(ValueError, match="must exceed max_wait_ms"):
        split_args({"run": "r", "slo_ms": "2", "max_wait_ms": "5"})


def test_the_policy_follows_the_settings():
    policy = ServeSettings(**SAMPLE).policy()
    assert (policy.slo_ms, policy.max_batch, policy.max_wait_ms) == (50.0, 4, 2.5)
    assert policy.steps.hold_s == 1.5
    with pytest.raises(ValueError, match="slo_ms"):
        ServeSettings().policy()


CORE = [
    "snnet.control",
    "snnet.serve.settings",
    "snnet.serve.backend",
    "snnet.serve.executor",
    "snnet.serve.batcher",
    "snnet.serve.predict",
    "snnet.serve.app",
    "snnet.serve.metrics",
    "snnet.cli.serve",
    *(["snnet.serve.ray"] if importlib.util.find_spec("ray") else []),
]


def test_the_serving_core_imports_no_torch():
    """Only the backend (``snnet.serve.model``) loads torch, so another runtime can serve."""
    pytest.importorskip("fastapi")
    probe = f"import sys\nfor m in {CORE!r}:\n    __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
