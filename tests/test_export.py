"""Exporting one stitch as a standalone model (safetensors, ONNX, torch.export), and the CLI from
measuring latency to exporting the stitch a budget selects."""

import importlib.util
import json

import pytest
import torch
from torch import nn

import snnet
from families import FAMILIES, perturb
from snnet import Stitch
from snnet.cli import main
from snnet.export import check_onnx, export, export_onnx, export_stitch, load_stitch, save_stitch
from snnet.measure.results import Results
from snnet.measure.select import select


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    models = FAMILIES[request.param][0]()
    net = snnet.SNNet(models).eval()
    perturb(net)
    x = torch.randn(3, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    return request.param, models, net, x


def _some_stitches(net: snnet.SNNet) -> list[Stitch]:
    """Every anchor, plus stitches spread over the space (first, middle, last)."""
    hops = [s for s in net.stitches if not s.is_anchor]
    picked = {hops[0], hops[len(hops) // 2], hops[-1]} if hops else set()
    return [s for s in net.stitches if s.is_anchor or s in picked]


# -- export -----------------------------------------------------------------------------------
def test_exported_stitch_equals_the_stitch_in_the_network(family):
    _, _, net, x = family
    with torch.no_grad():
        for stitch in _some_stitches(net):
            model = export_stitch(net, stitch).eval()
            assert torch.equal(model(x), net(x, stitch=stitch)), stitch
            assert sum(p.numel() for p in model.parameters()) == net.cost(stitch).params, stitch
            assert model.stitch == stitch and model.info["params"] == net.cost(stitch).params


def test_export_copies_only_what_the_stitch_runs(family, monkeypatch):
    _, _, net, x = family
    copied = []
    original = nn.Parameter.__deepcopy__

    def counting(self, memo):
        copied.append(self.numel())
        return original(self, memo)

    monkeypatch.setattr(nn.Parameter, "__deepcopy__", counting)
    stitch = next(s for s in net.stitches if not s.is_anchor)
    model = export_stitch(net, stitch)
    assert sum(copied) == net.cost(stitch).params  # nothing else was ever copied
    # The copy shares no storage with the network, and the network is untouched.
    ptrs = {p.data_ptr() for p in net.parameters()}
    assert not any(p.data_ptr() in ptrs for p in model.parameters())
    with torch.no_grad():
        before = net(x, stitch=stitch)
        next(model.parameters()).add_(1.0)
        assert torch.equal(net(x, stitch=stitch), before)
    assert len(list(net.parameters())) > len(list(model.parameters()))


def test_save_and_load_an_exported_stitch(family, tmp_path):
    name, _, net, x = family
    stitch = _some_stitches(net)[-1]
    model = export_stitch(net, stitch).eval()
    save_stitch(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stitch"] == str(stitch) and config["format"] == "snnet-stitch"
    assert [a["index"] for a in config["anchors"]] == list(stitch.route)
    if any(a["source"] is None for a in config["anchors"]):  # the user's own modules
        with pytest.raises(ValueError, match="pass anchors"):
            load_stitch(tmp_path)
        loaded = load_stitch(tmp_path, anchors=FAMILIES[name][0]())
    else:
        loaded = load_stitch(tmp_path)  # rebuilt from the recorded source, no SN-Net
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert sum(p.numel() for p in loaded.parameters()) == net.cost(stitch).params
    assert not any(p.is_meta for p in loaded.parameters())


def test_an_exported_stitch_carries_the_networks_preprocessing(tmp_path):
    """A stitch deployed on its own must see images as training did: the normalisation, size and
    class names recorded in the SN-Net travel into the export and back."""
    from snnet.data import DataConfig

    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    stitch = next(s for s in net.stitches if not s.is_anchor)
    assert export_stitch(net, stitch).data_config is None  # nothing recorded, nothing invented
    size = tuple(net.anchors[0].input_size[1:])
    recorded = DataConfig(3, size, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), classes=("a", "b"))
    net.data_config = recorded
    save_stitch(export_stitch(net, stitch), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["data"] == recorded.to_json()
    assert load_stitch(tmp_path).data_config == recorded


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(family, tmp_path):
    net = family[2]
    stitch = next(s for s in net.stitches if not s.is_anchor)
    model = export_stitch(net, stitch).eval()
    path = export_onnx(model, tmp_path / "model.onnx")  # checks itself within 1e-4
    assert check_onnx(model, path, batch_size=5) <= 1e-4  # another batch size: dynamic batch


def test_pt2_export_round_trip(tmp_path):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    model = export_stitch(net, "0:1-1:2").eval()
    paths = export(model, tmp_path, ["safetensors", "pt2"])
    program = torch.export.load(paths["pt2"]).module()
    x = torch.randn(5, *model.input_size)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-6)
    assert (tmp_path / "config.json").is_file()


def test_export_errors(tmp_path, monkeypatch):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    with pytest.raises(ValueError, match="not in this network"):
        export_stitch(net, "0:3-1:0")
    with pytest.raises(ValueError, match=r"has anchors 0\.\.2"):
        export_stitch(net, "5")
    model = export_stitch(net, "0")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export(model, tmp_path, ["tflite"])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"needs onnxscript: pip install 'snnet\[export\]'"):
        export(model, tmp_path, ["onnx"])
    assert not (tmp_path / "model.onnx").exists()
    snnet.save(net, tmp_path / "net")
    with pytest.raises(ValueError, match=r"not an exported stitch.*snnet\.load"):
        load_stitch(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="snnet export"):
        load_stitch(tmp_path / "nowhere")


# -- command line -----------------------------------------------------------------------------
def test_cli_latency_select_export(tmp_path, capsys):
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    perturb(net)
    snnet.save(net, tmp_path / "net")
    args = ["--repeats", "2", "--warmup", "0", "--threads", "1", "--settle", "0", "--no-progress"]
    assert main(["latency", str(tmp_path / "net"), *args]) == 0
    results = Results.load(tmp_path / "net" / "results.json")
    assert results.missing("latency_ms") == [] and results.meta["latency"]["threads"] == 1
    for i, r in enumerate(sorted(results, key=lambda r: r.gmacs)):
        results.update(r.stitch, top1=60.0 + i)
    results.save(tmp_path / "net" / "results.json")
    capsys.readouterr()

    budget = sorted(r.gmacs for r in results)[5]
    res_path = str(tmp_path / "net" / "results.json")
    assert main(["select", "--results", res_path, "--max-gmacs", str(budget), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["stitch"] == str(select(results, max_gmacs=budget).stitch)
    assert main(["select", "--results", res_path, "--pareto", "--cost", "latency_ms"]) == 0
    assert "on the front of latency_ms" in capsys.readouterr().out

    out = tmp_path / "deploy"
    assert (
        main(["export", str(tmp_path / "net"), "--max-gmacs", str(budget), "--out", str(out)]) == 0
    )
    assert f"selected stitch {row['stitch']}" in capsys.readouterr().out
    model = load_stitch(out)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        assert torch.equal(model(x), net(x, stitch=row["stitch"]))
