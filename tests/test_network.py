"""The core's promises beyond the per-family contracts: loading, switching, bad input."""

import threading
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy

import pytest
import timm
import torch
from safetensors.torch import save_file

import snnet
from families import FAMILIES, vit_family
from snnet import Stitch
from snnet.serialize import load_weights


def test_local_checkpoint_files_load_into_anchors(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10
    )
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        anchor = snnet.timm_anchor("vit_tiny_patch16_224", checkpoint=tmp_path / file, **kwargs)
        for (name, a), b in zip(
            anchor.model.state_dict().items(), source.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
    # The CLI form NAME=PATH goes through the same path.
    anchors, _ = snnet.resolve_anchors([f"vit_tiny_patch16_224={tmp_path / 'w.pth'}"] * 2, **kwargs)
    assert torch.equal(anchors[1].model.head.weight, source.head.weight)


def test_checkpoint_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        snnet.timm_anchor("vit_tiny_patch16_224", checkpoint=tmp_path / "missing.pth")
    other = timm.create_model("resnet18", num_classes=10)
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"could not load .*resnet\.pth into vit_tiny"):
        snnet.timm_anchor("vit_tiny_patch16_224", checkpoint=tmp_path / "resnet.pth", img_size=32)
    with pytest.raises(OSError, match="Offline"):
        snnet.timm_anchor("vit_tiny_patch16_224", pretrained=True, img_size=32)
    with pytest.raises(ValueError, match="Did you mean deit_small_patch16_224"):
        snnet.timm_anchor("deit_smal_patch16_224")


def test_weights_of_another_network_are_refused(tmp_path):
    net = snnet.SNNet(vit_family())
    snnet.save(net, tmp_path)
    smaller = snnet.SNNet(vit_family()[:2])
    with pytest.raises(ValueError, match="stitching layers"):
        load_weights(
            smaller, tmp_path / "model.safetensors", expected=snnet.serialize.read_config(tmp_path)
        )
    with pytest.raises(ValueError, match="does not fit this network"):
        load_weights(smaller, tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"snnet\.save"):
        snnet.load(tmp_path / "nowhere")


def test_token_counts_that_cannot_be_stitched():
    a = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2
    )
    b = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2
    )
    with pytest.raises(ValueError, match="same img_size and patch size"):
        snnet.SNNet([a, b])
    c = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2
    )
    with pytest.raises(ValueError, match="equal depth"):
        snnet.SNNet([a, c], mode="paired")


def test_anchors_out_of_order():
    small, mid, _ = vit_family()
    with pytest.raises(ValueError, match="small to large"):
        snnet.SNNet([mid, small])


def test_stitched_paths_apply_the_end_anchors_final_norm():
    net = snnet.SNNet(vit_family()).eval()
    calls = []
    net.anchors[1].model.norm.register_forward_hook(lambda *_: calls.append(1))
    net(torch.randn(1, 3, 32, 32), stitch="0:1-1:2")
    assert calls == [1]


def test_switching_forms_and_restoring():
    net = snnet.SNNet(vit_family()).eval()
    x = torch.randn(2, 3, 32, 32)
    assert net.stitch == snnet.Stitch.anchor(2)  # the largest anchor by default
    net.stitch = "0:1-1:2"
    a = net(x)
    assert torch.equal(a, net(x, stitch=snnet.Stitch.between(0, 1, 1, 2)))
    with net.using("1"):
        assert torch.equal(net(x), net(x, stitch="1"))
    assert net.stitch == snnet.Stitch.parse("0:1-1:2")
    with pytest.raises(RuntimeError), net.using("0"):
        raise RuntimeError("boom")
    assert net.stitch == snnet.Stitch.parse("0:1-1:2")
    net(x, stitch="2")  # a per-call stitch leaves the module's stitch alone
    assert net.stitch == snnet.Stitch.parse("0:1-1:2")


def test_using_from_two_threads_keeps_each_threads_stitch():
    # Interleaved: A enters, B enters, A leaves, B leaves. A shared "previous stitch" would let B
    # run A's stitch... and restore A's stitch for good when B leaves.
    net = snnet.SNNet(vit_family()).eval()
    x = torch.randn(1, 3, 32, 32)
    net.stitch = "1"
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def run(name: str, stitch: str, enter: threading.Event, wait: threading.Event) -> None:
        with net.using(stitch):
            enter.set()
            wait.wait(10)
            seen[name] = (net.stitch, torch.equal(net(x), net(x, stitch=stitch)))
        if name == "a":
            a_out.set()

    def run_b() -> None:
        a_in.wait(10)
        with net.using("0"):
            b_in.set()
            a_out.wait(10)
            seen["b"] = (net.stitch, torch.equal(net(x), net(x, stitch="0")))

    threads = [
        threading.Thread(target=run, args=("a", "2", a_in, b_in)),
        threading.Thread(target=run_b),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": (snnet.Stitch.anchor(2), True), "b": (snnet.Stitch.anchor(0), True)}
    assert net.stitch == snnet.Stitch.anchor(1)  # what was set before either thread


def test_a_copy_made_inside_using_runs_that_stitch_in_every_thread():
    net = snnet.SNNet(vit_family()).eval()
    with net.using("0"):
        copy = deepcopy(net)
    assert net.stitch == snnet.Stitch.anchor(2) and copy.stitch == snnet.Stitch.anchor(0)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(copy.stitch))
    thread.start()
    thread.join(10)
    assert seen == [snnet.Stitch.anchor(0)]


def test_parameters_of_a_stitch_follow_weights_assigned_later():
    # A cached list would keep pointing at the replaced tensors: DDP's rescaling would then miss
    # every parameter a rank actually ran.
    net = snnet.SNNet(vit_family())
    stitch = net.stitches[-1]
    before = net.parameters_of(stitch)
    net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
    current = {id(p) for p in net.parameters()}
    after = net.parameters_of(stitch)
    assert len(after) == len(before) and all(id(p) in current for p in after)
    assert set(vars(net)) == set(vars(snnet.SNNet(vit_family())))  # nothing written behind its back


def test_no_weight_decay_names_survive_the_wrapper():
    net = snnet.SNNet(vit_family())
    names = net.no_weight_decay()
    assert "anchors.0.model.pos_embed" in names and "anchors.2.model.cls_token" in names
    assert names <= dict(net.named_parameters()).keys()


def test_pooled_least_squares_is_one_problem_not_an_average(fmnist_images):
    from conftest import as_rgb

    net = snnet.SNNet(vit_family()[:2]).eval()
    images = as_rgb(fmnist_images[:64], 32)
    snnet.init_least_squares(net, images, batch_size=16)
    key = net.space.positions[(0, 1)][0].layer  # window 0 serves four cuts
    cuts = [p.cut for p in net.space.positions[(0, 1)] if p.layer == key]
    assert len(cuts) == 4
    with torch.no_grad():
        fa = net.anchors[0].boundaries(images)
        fb = net.anchors[1].boundaries(images)
    x = torch.cat([fa[c.out_block + 1].reshape(-1, 16) for c in cuts]).double()
    y = torch.cat([fb[c.in_block].reshape(-1, 32) for c in cuts]).double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    a = torch.linalg.lstsq(x1, y).solution
    torch.testing.assert_close(net.layers[key].weight, a[:-1].T.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net.layers[key].bias, a[-1].float(), atol=1e-4, rtol=1e-4)


def test_config_files_that_are_not_snnet_networks(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        snnet.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "snnet-stitch"}')
    with pytest.raises(ValueError, match="not an snnet config"):
        snnet.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "snnet", "version": 99}')
    with pytest.raises(ValueError, match="newer snnet"):
        snnet.load(tmp_path)


def _perturb_layers(net: snnet.SNNet) -> None:
    """Non-zero stitching-layer biases, so every stitch computes something of its own."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers.values():
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))


# -- runtime switching ------------------------------------------------------------------------
def test_switching_moves_no_weights():
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    before = {n: (p.data_ptr(), p.device) for n, p in net.named_parameters()}
    for stitch in net.stitches:
        net.stitch = stitch
        with net.using("0"):
            assert net.stitch == Stitch.parse("0")
        assert net.stitch == stitch
    assert {n: (p.data_ptr(), p.device) for n, p in net.named_parameters()} == before
    with pytest.raises(ValueError, match="not in this network"):
        net.stitch = "0:3-1:0"
    assert net.stitch == net.stitches[-1]  # a rejected stitch leaves the current one


def test_concurrent_callers_with_different_stitches_match_sequential_runs():
    net = snnet.SNNet(FAMILIES["vit"][0]()).eval()
    _perturb_layers(net)
    x = torch.randn(4, *net.anchors[0].input_size, generator=torch.Generator().manual_seed(0))
    stitches = list(net.stitches)
    with torch.no_grad():
        expected = {s: net(x, stitch=s) for s in stitches}
    current = net.stitch
    start = threading.Barrier(4)

    def worker(k: int) -> list[tuple[Stitch, torch.Tensor]]:
        start.wait()  # all threads run at once
        order = stitches[k::4] * 3 + stitches[::-1][k::4] * 3
        with torch.no_grad():
            return [(s, net(x, stitch=s)) for s in order]

    with ThreadPoolExecutor(4) as pool:
        outs = [o for batch in pool.map(worker, range(4)) for o in batch]
    assert len(outs) == 6 * len(stitches)
    for s, out in outs:
        assert torch.equal(out, expected[s]), s
    assert net.stitch == current  # per-call stitches never touch the shared one
