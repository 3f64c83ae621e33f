"""Several stitches as one switchable artifact (``snnet export --front``): the ONNX graph that
takes uint8 pixels and a stitch index, the smaller SN-Net behind ``--format safetensors``, the
``.pt2`` program, and the restricted network they are built from."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import snnet
from families import FAMILIES, perturb
from snnet import Stitch
from snnet.artifact import read_front_config
from snnet.cli import main
from snnet.data import DataConfig
from snnet.export import front as front_module
from snnet.export.front import export_front, front_network, front_stitches
from snnet.measure.results import Results


def _network(name: str) -> snnet.SNNet:
    net = snnet.SNNet(FAMILIES[name][0]()).eval()
    perturb(net)
    c, h, w = net.anchors[0].input_size
    net.data_config = DataConfig(c, (h, w), (0.45,) * c, (0.22,) * c)  # as training records it
    return net


def _two(net: snnet.SNNet) -> list[Stitch]:
    """A stitch through the middle of the space and the largest anchor: one shares the other's
    weights, one has weights of its own."""
    hops = [s for s in net.stitches if not s.is_anchor]
    return [hops[len(hops) // 2], Stitch.anchor(len(net.anchors) - 1)]


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _pixels(net: snnet.SNNet, n: int = 2, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *net.anchors[0].input_size), generator=g, dtype=torch.uint8)


def _run(session, pixels: torch.Tensor, index: int) -> torch.Tensor:
    feeds = {"pixels": pixels.numpy(), "stitch": np.array(index, dtype=np.int64)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _param_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# -- the restricted network -------------------------------------------------------------------
def test_a_restricted_network_keeps_only_its_stitches_parts_and_layers(tmp_path):
    net = _network("vit")
    kept = [Stitch.parse("0"), Stitch.parse("0:1-1:2"), Stitch.parse("1:2-2:3")]
    front = copy.deepcopy(net).restrict(kept)
    assert front.stitches == tuple(kept) and front.stitch == kept[-1]
    assert sorted(front.layers) == sorted({net.plan(s)[0].layer for s in kept[1:]})
    used = {id(p) for s in kept for p in net.parameters_of(s)}
    assert sum(p.numel() for p in front.parameters()) == sum(
        p.numel() for p in net.parameters() if id(p) in used
    )
    x = torch.randn(2, *net.anchors[0].input_size)
    with torch.no_grad():
        for s in kept:
            assert torch.equal(front(x, stitch=s), net(x, stitch=s))
            assert front.cost(s) == net.cost(s)
    with pytest.raises(ValueError, match=r"keeps only 3 stitches \(0, 0:1-1:2, 1:2-2:3\)"):
        front(x, stitch="1")
    snnet.save(front, tmp_path / "front")
    loaded = snnet.load(tmp_path / "front")  # rebuilt whole from the sources, then restricted
    assert loaded.stitches == front.stitches
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in front.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(x, stitch=kept[1]), net(x, stitch=kept[1]))
    with pytest.raises(ValueError, match="at least one stitch"):
        copy.deepcopy(net).restrict([])


# -- ONNX, every family -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(FAMILIES))
def onnx_front(request, tmp_path_factory):
    net = _network(request.param)
    stitches = _two(net)
    out = tmp_path_factory.mktemp(f"front-{request.param}")
    export_front(net, out, ["onnx"], stitches=stitches)
    return net, stitches, out


@pytest.mark.slow
def test_each_stitch_of_an_onnx_front_gives_the_networks_logits(onnx_front):
    net, stitches, out = onnx_front
    session = _session(out / "model.onnx")
    pixels = _pixels(net, 3)
    config = read_front_config(out)
    data = DataConfig.from_json(config["data"])
    assert data == net.data_config
    rows = [Stitch.parse(r["stitch"]) for r in config["stitches"]]  # the index's order
    assert sorted(rows) == sorted(stitches)
    assert [net.cost(s).macs for s in rows] == sorted(net.cost(s).macs for s in rows)
    for i, s in enumerate(rows):
        with torch.no_grad():
            want = net(data.normalize(pixels), stitch=s)
        torch.testing.assert_close(_run(session, pixels, i), want, rtol=0, atol=1e-5)
        assert config["checked"]["onnx"][i] <= 1e-5


@pytest.mark.slow
def test_an_onnx_front_holds_each_weight_once(onnx_front):
    net, stitches, out = onnx_front
    held = _param_bytes(front_network(net, stitches))  # each distinct tensor once
    assert (out / "model.onnx").stat().st_size <= 1.1 * held
    alone = sum(_param_bytes(snnet.export_stitch(net, s)) for s in stitches)
    assert held < alone  # the stitches share weights, held once


@pytest.mark.slow
def test_an_onnx_front_says_what_it_is_in_its_metadata(onnx_front):
    _, _, out = onnx_front
    config = read_front_config(out)
    model = onnx.load(out / "model.onnx", load_external_data=False)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    for key in ("format", "version", "stitches", "data", "inputs", "outputs"):
        assert meta[f"snnet.{key}"] == config[key]
    assert config["format"] == "snnet-front"
    assert [i.name for i in model.graph.input] == ["pixels", "stitch"]
    c, (h, w) = config["data"]["channels"], config["data"]["size"]
    assert config["inputs"][0] == {"name": "pixels", "dtype": "uint8", "shape": ["batch", c, h, w]}


# -- switching, the other formats, errors -----------------------------------------------------
@pytest.fixture(scope="module")
def sequential_front(tmp_path_factory):
    """Three stitches of the two-anchor CNN family (all but the large anchor, whose stem none
    of them runs), so the index goes through two ``If``s, in every format."""
    net = _network("sequential")
    out = tmp_path_factory.mktemp("front-sequential")
    stitches = [s for s in net.stitches if s != Stitch.anchor(1)]
    written = export_front(net, out, ["onnx", "safetensors", "pt2"], stitches=stitches)
    return net, out, written


def test_the_stitch_index_chooses_counts_from_the_end_and_is_checked(sequential_front):
    net, out, _ = sequential_front
    session = _session(out / "model.onnx")
    pixels = _pixels(net)
    stitches = [Stitch.parse(r["stitch"]) for r in read_front_config(out)["stitches"]]
    macs = [net.cost(s).macs for s in stitches]
    assert len(stitches) == 3 and macs == sorted(macs)  # cheapest first
    outs = [_run(session, pixels, i) for i in range(len(stitches))]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(outs, 2))
    assert torch.equal(_run(session, pixels, -1), outs[-1])  # as in Python
    for bad in (len(stitches), -len(stitches) - 1):
        with pytest.raises(Exception, match=r"out of data bounds"):
            _run(session, pixels, bad)


def test_a_front_of_one_stitch_checks_its_index_too(tmp_path):
    net = _network("sequential")
    hop = next(s for s in net.stitches if not s.is_anchor)
    export_front(net, tmp_path, ["onnx"], stitches=[hop])
    session, pixels = _session(tmp_path / "model.onnx"), _pixels(net)
    with torch.no_grad():
        want = net(net.data_config.normalize(pixels), stitch=hop)
    for index in (0, -1):
        torch.testing.assert_close(_run(session, pixels, index), want, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match=r"out of data bounds"):
        _run(session, pixels, 1)


def test_a_safetensors_front_is_a_smaller_snnet(sequential_front):
    net, out, written = sequential_front
    # the front's directory is its own model (these anchors are the user's own modules: given)
    small = snnet.load(out, anchors=FAMILIES["sequential"][0]()).eval()
    assert small.stitches == tuple(s for s in net.stitches if s != Stitch.anchor(1))
    from safetensors.torch import load_file

    stored = load_file(written["safetensors"])  # the smaller network's tensors, nothing else
    assert stored.keys() == small.state_dict().keys()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    x = torch.randn(2, *net.anchors[0].input_size)
    with torch.no_grad():
        for s in small.stitches:
            assert torch.equal(small(x, stitch=s), net(x, stitch=s))
    assert small.data_config == net.data_config


def test_a_pt2_front_switches_in_one_program(sequential_front):
    net, out, written = sequential_front
    program = torch.export.load(written["pt2"]).module()
    pixels = _pixels(net)
    for i, row in enumerate(read_front_config(out)["stitches"]):
        with torch.no_grad():
            want = net(net.data_config.normalize(pixels), stitch=row["stitch"])
            got = program(pixels, torch.tensor(i))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_parameter_efficient_front_exports_to_onnx(tmp_path):
    """LoRA runs after a route's first stitching layer only: each branch holds the weights its
    stitch runs, the LoRA folded in where it applies."""
    net = snnet.SNNet(FAMILIES["vit"][0](), lora_rank=2).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(generator=torch.Generator().manual_seed(2))
    net.data_config = DataConfig(3, (32, 32), (0.45,) * 3, (0.22,) * 3)
    stitches = [Stitch.parse("0:1-1:2"), Stitch.parse("2")]
    with pytest.raises(ValueError, match="exports to onnx and safetensors; pt2 needs"):
        export_front(net, tmp_path, ["onnx", "pt2"], stitches=stitches)
    assert list(tmp_path.iterdir()) == []
    export_front(net, tmp_path, ["onnx"], stitches=stitches)
    session, pixels = _session(tmp_path / "model.onnx"), _pixels(net)
    for i, s in enumerate(stitches):
        with torch.no_grad():
            want = net(net.data_config.normalize(pixels), stitch=s)
        torch.testing.assert_close(_run(session, pixels, i), want, rtol=0, atol=1e-5)


def test_a_front_of_results_is_their_pareto_front(tmp_path):
    net = _network("sequential")
    results = Results.for_network(net)
    with pytest.raises(ValueError, match="snnet evaluate"):
        front_stitches(results)
    for i, r in enumerate(sorted(results, key=lambda r: r.gmacs)):
        results.update(r.stitch, top1=[50.0, 70.0, 60.0, 80.0][i])  # the third is dominated
    want = [r.stitch for r in results.pareto("gmacs", "top1")]
    assert front_stitches(results) == want and len(want) == 3
    export_front(net, tmp_path, ["onnx"], results=results)
    rows = read_front_config(tmp_path)["stitches"]
    assert [r["stitch"] for r in rows] == [str(s) for s in want]
    assert [r["top1"] for r in rows] == [results[s].top1 for s in want]


def test_bad_arguments_are_one_line_errors(tmp_path):
    net = _network("sequential")
    cases = [
        ({"stitches": ["0", "0"]}, "stitch 0 is listed twice"),
        ({"stitches": ["0", "0:3-1:0"]}, "not in this network"),
        ({"stitches": []}, "no stitches to export"),
        ({}, "give the stitches to export, or the results"),
        ({"stitches": ["0"], "formats": ["tflite"]}, "unknown export format 'tflite'"),
    ]
    for kwargs, message in cases:
        formats = kwargs.pop("formats", ["onnx"])
        with pytest.raises(ValueError, match=message) as e:
            export_front(net, tmp_path / "out", formats, **kwargs)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_front_that_disagrees_with_the_network_is_not_written(tmp_path, monkeypatch):
    net = _network("sequential")
    real = front_module.reference_logits

    def off(*args, **kwargs):
        return [t + 1e-3 for t in real(*args, **kwargs)]

    monkeypatch.setattr(front_module, "reference_logits", off)
    with pytest.raises(ValueError, match=r"differs from the SN-Net by 0.001 .*nothing was written"):
        export_front(net, tmp_path, ["onnx"], stitches=["0", "1"])
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_exports_the_front_of_a_run(tmp_path, capsys):
    net = _network("vit")  # timm anchors: rebuilt from their recorded source
    snnet.save(net, tmp_path / "net")
    results = Results.for_network(net)
    for r in results:  # the anchors dominate every stitch between them
        results.update(r.stitch, top1=60.0 + r.stitch.route[0] if r.stitch.is_anchor else 50.0)
    results.save(tmp_path / "net" / "results.json")
    out = tmp_path / "front"
    args = ["export", str(tmp_path / "net"), "--front", "--format", "onnx", "safetensors"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported 3 stitches as one artifact" in printed
    assert "every stitch of the onnx graph within" in printed
    config = read_front_config(out)
    assert sorted(config["sha256"]) == ["model.onnx", "model.safetensors"]
    assert [r["stitch"] for r in config["stitches"]] == ["0", "1", "2"]
    assert config["stitches"][-1]["top1"] == 62.0
    assert main(["export", str(tmp_path / "net"), "--stitches", "1", "0", "--out", str(out)]) == 0
    config = read_front_config(out)  # a new export replaces the files of the last
    assert [r["stitch"] for r in config["stitches"]] == ["0", "1"]
    assert sorted(config["sha256"]) == ["model.safetensors"]
    assert not (out / "model.onnx").exists()


def test_the_artifact_format_reads_without_torch(sequential_front):
    _, out, _ = sequential_front
    probe = (
        "import sys\n"
        "from snnet.artifact import read_front_config\n"
        f"config = read_front_config({str(out)!r})\n"
        "print(len(config['stitches']), sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["3", "[]"]
