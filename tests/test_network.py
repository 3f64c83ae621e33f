"""The core's promises beyond the per-family contracts: loading, switching, bad input."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import snnet
from families import vit_family
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
    with pytest.raises(RuntimeError, match="Offline"):
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


def test_commands_find_the_model_of_a_training_or_demo_run(tmp_path):
    from snnet.cli.common import model_dir

    net = snnet.SNNet(vit_family()[:2])
    for layout in ("saved", "run/model", "demo/train/model"):
        snnet.save(net, tmp_path / layout)
        assert model_dir(tmp_path / layout.split("/")[0]) == tmp_path / layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="snnet demo"):
        model_dir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_dir(tmp_path / "nowhere")
