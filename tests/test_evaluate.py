"""Evaluating every stitch in one pass: same numbers as one stitch at a time, fewer blocks run,
resumable, plotted; on tiny random-initialised families and real Fashion-MNIST images."""

import json

import pytest
import torch
from torch.utils.data import Dataset

import snnet
from conftest import as_rgb
from families import FAMILIES, vit_family
from snnet.cli import main
from snnet.data import fashion_mnist, stratified_indices, write_image_folder
from snnet.measure.evaluate import StitchTree, evaluate_all, progress_path
from snnet.measure.plot import plot_results
from snnet.measure.results import Results


class Images(Dataset):
    """The first ``n`` Fashion-MNIST test images as ``size``×``size`` RGB inputs (each tiny family
    takes its own size: LeViT's attention tables fix the resolution)."""

    def __init__(self, n: int = 200, *, batched: bool = False, size: int = 32) -> None:
        ds = fashion_mnist("test")
        self.x = as_rgb(ds.memory[:n].float() / 255, size)
        self.y = ds.targets[:n]
        self.targets = self.y  # the classes a stratified sample (max_images) keeps in proportion
        self.requested: list[int] = []
        if batched:  # like snnet.data.FashionMNIST: one indexing call per batch
            self.get_batch = self._get_batch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        self.requested.append(int(i))
        return self.x[i], self.y[i]

    def _get_batch(self, idx):
        self.requested += idx.tolist()
        return self.x[idx], self.y[idx]

    def batches(self, size: int):
        return [(self.x[i : i + size], self.y[i : i + size]) for i in range(0, len(self.y), size)]


@pytest.fixture(scope="module")
def images() -> Images:
    return Images()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def net(request) -> snnet.SNNet:
    return snnet.SNNet(FAMILIES[request.param][0]()).eval()


@pytest.fixture(scope="module")
def net_images(net) -> Images:
    return Images(size=net.anchors[0].input_size[-1])


@pytest.fixture
def vit() -> snnet.SNNet:
    return snnet.SNNet(vit_family()).eval()


def one_by_one(net, batches):
    """The reference's way: a pass over the data per stitch."""
    counts = {}
    with torch.inference_mode():
        for s in net.stitches:
            c1 = c5 = n = 0
            for x, y in batches:
                top = net(x, stitch=s).topk(5, dim=-1).indices
                c1 += (top[:, 0] == y).sum().item()
                c5 += (top == y[:, None]).any(-1).sum().item()
                n += len(y)
            counts[s] = (100.0 * c1 / n, 100.0 * c5 / n)
    return counts


def test_tree_gives_each_stitch_its_own_logits(net, net_images):
    x = net_images.x[:16]
    tree = StitchTree(net)
    with torch.inference_mode():
        out = list(tree.run(x))
        assert sorted(s for s, _ in out) == sorted(net.stitches)  # each stitch exactly once
        for s, logits in out:
            torch.testing.assert_close(logits, net(x, stitch=s), rtol=0, atol=0)


def test_one_pass_equals_one_stitch_at_a_time(net, net_images):
    batches = net_images.batches(64)
    expected = one_by_one(net, batches)
    for data in (net_images, batches, Images(batched=True, size=net_images.x.shape[-1])):
        results = evaluate_all(net, data, batch_size=64, progress=False, device="cpu")
        assert {r.stitch: (r.top1, r.top5) for r in results} == expected
    assert results.meta["accuracy"]["images"] == 200
    assert results.meta["accuracy"]["batch_size"] == 64
    for r in results:  # costs come from the network
        assert (r.gmacs, r.params) == (
            round(net.cost(r.stitch).gmacs, 6),
            net.cost(r.stitch).params,
        )
    assert len({r.top1 for r in results}) > 1  # the stitches do differ on real images


def test_shared_prefixes_run_fewer_blocks(net, net_images):
    calls = []
    hooks = [
        modules[0].register_forward_hook(lambda *_, a=a, b=b: calls.append((a, b)))
        for a, anchor in enumerate(net.anchors)
        for b, modules in enumerate(anchor.blocks)
    ]
    x = net_images.x[:4]
    tree = StitchTree(net)
    try:
        with torch.inference_mode():
            list(tree.run(x))
            shared = len(calls)
            calls.clear()
            for s in net.stitches:
                net(x, stitch=s)
            separate = len(calls)
    finally:
        for h in hooks:
            h.remove()
    assert (shared, separate) == (tree.block_runs, tree.block_runs_per_stitch)
    assert shared < separate


def test_subset_and_max_images(vit, images):
    results = evaluate_all(vit, images, stitches=["2", "0:1-1:2"], max_images=50, progress=False)
    measured = {str(r.stitch) for r in results if r.top1 is not None}
    assert measured == {"2", "0:1-1:2"}
    assert results.meta["accuracy"]["images"] == 50
    assert results.meta["accuracy"]["sample"] == {"images": 50, "seed": 0, "kind": "stratified"}
    picked = stratified_indices(images.y, 50, seed=0)
    expected = one_by_one(vit, [(images.x[picked], images.y[picked])])
    assert (results["2"].top1, results["2"].top5) == expected[snnet.Stitch.parse("2")]
    amp = evaluate_all(vit, images, stitches=["2"], max_images=50, amp=True, progress=False)
    assert amp.meta["accuracy"]["amp"] and 0 <= amp["2"].top1 <= 100


def interrupted(batches, after, error=KeyboardInterrupt):
    for i, batch in enumerate(batches):
        if i == after:
            raise error()
        yield batch


@pytest.mark.parametrize("batched", [False, True])
def test_resume_after_interruption_equals_one_run(vit, tmp_path, batched):
    data = Images(batched=batched)
    whole = evaluate_all(vit, data, batch_size=32, progress=False)
    path = tmp_path / "results.json"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the 4th batch of 7
        evaluate_all(
            vit, interrupted(data.batches(32), 3), path=path, progress=False, data_name="fm"
        )
    saved = json.loads(progress_path(path).read_text())
    assert (saved["images"], saved["batches"]) == (96, 3) and not path.exists()

    data.requested.clear()
    resumed = evaluate_all(
        vit, data, batch_size=32, path=path, progress=False, data_name="fm", num_workers=0
    )
    assert sorted(data.requested) == list(range(96, 200))  # only the images not counted yet
    assert [(r.stitch, r.top1, r.top5) for r in resumed] == [
        (r.stitch, r.top1, r.top5) for r in whole
    ]
    assert not progress_path(path).exists() and Results.load(path)["0"].top1 == whole["0"].top1


def test_progress_is_checkpointed_every_n_batches(vit, tmp_path, images):
    path = tmp_path / "results.json"
    seen = []

    def watched():
        for i, batch in enumerate(images.batches(20)):
            if progress_path(path).exists():
                seen.append((i, json.loads(progress_path(path).read_text())["batches"]))
            yield batch

    evaluate_all(vit, watched(), path=path, checkpoint_every=3, progress=False)
    assert seen == [(i, 3 * (i // 3)) for i in range(3, 10)]
    assert not progress_path(path).exists()


def test_finished_stitches_are_not_measured_again(vit, tmp_path, images):
    path = tmp_path / "r.json"
    evaluate_all(vit, images, stitches=["0"], path=path, progress=False)
    doc = json.loads(path.read_text())
    for r in doc["records"]:
        if r["stitch"] == "0":
            r["top1"] = 123.0  # a value no evaluation could give
    path.write_text(json.dumps(doc))
    results = evaluate_all(vit, images, path=path, progress=False)
    assert results["0"].top1 == 123.0 and not results.missing("top1")


def test_errors(vit, tmp_path, images):
    path = tmp_path / "r.json"
    evaluate_all(vit, images, stitches=["0"], path=path, progress=False)
    other = snnet.SNNet(vit_family(), kernel_size=1)
    with pytest.raises(ValueError, match="another network"):
        evaluate_all(other, images, path=path, progress=False)
    with pytest.raises(ValueError, match="other sample"):
        evaluate_all(vit, images, path=path, max_images=10, progress=False)
    with torch.no_grad():
        vit.layers[next(iter(vit.layers))].weight.add_(1)  # as after more training
    with pytest.raises(ValueError, match="other weights"):
        evaluate_all(vit, images, path=path, progress=False)
    with pytest.raises(ValueError, match="not in this network"):
        evaluate_all(vit, images, stitches=["0:9-1:0"], progress=False)
    with pytest.raises(ValueError, match="no images"):
        evaluate_all(vit, [], progress=False)

    path = tmp_path / "s.json"
    batches = interrupted(images.batches(50), 1, RuntimeError)
    with pytest.raises(RuntimeError):  # any error mid-way saves the progress too
        evaluate_all(vit, batches, path=path, progress=False, data_name="fm")
    with pytest.raises(ValueError, match="different data"):
        evaluate_all(vit, images, path=path, progress=False)
    with pytest.raises(ValueError, match="other stitches"):
        evaluate_all(vit, images, stitches=["1"], path=path, progress=False, data_name="fm")


def test_plot_writes_a_png(vit, tmp_path, images):
    results = evaluate_all(vit, images, progress=False)
    out = plot_results(results, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 600 and height > 400
    plot_results(results, tmp_path / "params.png", cost="params", metric="top5")
    with pytest.raises(ValueError, match="latency"):
        plot_results(results, tmp_path / "lat.png", cost="latency_ms")
    with pytest.raises(ValueError, match="snnet evaluate"):
        plot_results(Results.for_network(vit), tmp_path / "none.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.png", "plot.png"]


def test_cli_evaluate_and_plot(vit, tmp_path, capsys):
    model = snnet.save(vit, tmp_path / "run")
    folder = write_image_folder(fashion_mnist("test"), tmp_path / "images", limit=64)
    args = ["evaluate", str(model), "--data", str(folder), "--batch-size", "16", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "23 of 23 stitches measured on 64 images" in out and " *" in out
    lines = out.splitlines()[1:24]
    gmacs = [float(line.split()[1]) for line in lines]
    assert gmacs == sorted(gmacs)  # the table is sorted by cost
    results = Results.load(model / "results.json")
    assert (model / "results.csv").is_file() and not results.missing("top1")

    assert main(["plot", str(model / "results.json")]) == 0
    assert (model / "pareto_gmacs.png").read_bytes()[:4] == b"\x89PNG"

    for bad, message in [
        (["evaluate", str(tmp_path / "nope")], "does not exist"),
        (["evaluate", str(folder)], "no config.json"),
        (["evaluate", str(model)], "pass --data PATH"),
        (["evaluate", str(model), "--data", str(folder), "--stitches", "7"], "names anchor 7"),
        (["plot", str(tmp_path / "missing.json")], "does not exist"),
    ]:
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("killed_at", ["first", "second"])
def test_a_kill_during_the_final_save_is_repaired_by_the_rerun(
    vit, tmp_path, images, monkeypatch, killed_at
):
    """Defect: killed between results.json and results.csv, the rerun returned early, wrote no
    CSV, left the progress file and still printed "Wrote ... results.csv"."""
    import snnet.measure.results as results_mod

    path = tmp_path / "results.json"
    real, writes = results_mod.atomic_write, []

    def killed(target, write, **kw):  # SIGKILL at the first or second file of the final save
        writes.append(target)
        if len(writes) == (1 if killed_at == "first" else 2):
            raise KeyboardInterrupt
        return real(target, write, **kw)

    monkeypatch.setattr(results_mod, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_all(vit, images, path=path, batch_size=50, checkpoint_every=1, progress=False)
    monkeypatch.setattr(results_mod, "atomic_write", real)
    assert progress_path(path).exists()  # the counts were checkpointed before the save

    again = evaluate_all(vit, images, path=path, batch_size=50, progress=False)
    assert not again.missing("top1") and not progress_path(path).exists()
    assert Results.load(path).records == again.records
    assert (tmp_path / "results.csv").read_text() == again.to_csv()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]


def test_a_stale_csv_is_rewritten_and_a_live_progress_file_kept(vit, tmp_path, images):
    path = tmp_path / "results.json"
    evaluate_all(vit, images, stitches=["0"], path=path, progress=False, data_name="fm")
    (tmp_path / "results.csv").write_text("stitch\n")  # e.g. from an older, killed snnet
    with pytest.raises(KeyboardInterrupt):  # another evaluation, unfinished
        evaluate_all(vit, interrupted(images.batches(50), 1), stitches=["1"], path=path,
                     progress=False, data_name="fm")  # fmt: skip
    live = progress_path(path).read_text()
    results = evaluate_all(vit, images, stitches=["0"], path=path, progress=False, data_name="fm")
    assert (tmp_path / "results.csv").read_text() == results.to_csv()
    assert progress_path(path).read_text() == live  # its stitch 1 is not measured yet


def test_an_unwritable_output_fails_before_the_first_batch(vit, tmp_path, images):
    (tmp_path / "file").write_text("keep me")
    read = []

    def watched():
        for batch in images.batches(50):
            read.append(1)
            yield batch

    with pytest.raises(NotADirectoryError):
        evaluate_all(vit, watched(), path=tmp_path / "file" / "r.json", progress=False)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(IsADirectoryError):
        evaluate_all(vit, watched(), path=tmp_path / "dir.json", progress=False)
    assert read == [] and (tmp_path / "file").read_text() == "keep me"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_the_network_goes_back_to_its_device_and_mode(vit, images):
    vit.train()
    results = evaluate_all(vit, images, stitches=["0"], device="cuda", progress=False)
    assert results["0"].top1 is not None
    assert vit.training and {p.device.type for p in vit.parameters()} == {"cpu"}
    vit.to("cuda").eval()
    evaluate_all(vit, images, stitches=["0"], device="cpu", progress=False)
    assert not vit.training and {p.device.type for p in vit.parameters()} == {"cuda"}


def _fmnist_folder(root, n: int):
    return write_image_folder(fashion_mnist("test"), root, limit=n)


def test_unreadable_images_are_left_out_not_replaced_by_their_neighbours(vit, tmp_path, capsys):
    # A folder of 40 images, 3 of them damaged: evaluation counts 37 images, never a neighbour
    # counted twice under the damaged file's label.
    model = snnet.save(vit, tmp_path / "run")
    folder = _fmnist_folder(tmp_path / "images", 40)
    damaged = sorted(folder.rglob("*.png"))[::13][:3]
    for path in damaged:
        path.write_bytes(path.read_bytes()[:60])  # a PNG cut short
    args = ["evaluate", str(model), "--data", str(folder), "--batch-size", "16", "--workers", "0"]
    assert main(args) == 0
    assert "measured on 37 images" in capsys.readouterr().out
    assert Results.load(model / "results.json").meta["accuracy"]["images"] == 37


def test_a_root_with_train_and_val_is_evaluated_on_val(vit, tmp_path, capsys):
    model = snnet.save(vit, tmp_path / "run")
    _fmnist_folder(tmp_path / "data" / "train", 30)
    _fmnist_folder(tmp_path / "data" / "val", 20)
    args = ["evaluate", str(model), "--data", str(tmp_path / "data"), "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured on 20 images" in out and str(tmp_path / "data" / "val") in out


def test_a_folder_with_other_classes_than_the_network_predicts_is_refused(vit, tmp_path, capsys):
    model = snnet.save(vit, tmp_path / "run")
    folder = tmp_path / "two"
    for name in ("cats", "dogs"):
        _fmnist_folder(folder / name, 4)  # two class folders, each a little ImageFolder inside
    args = ["evaluate", str(model), "--data", str(folder), "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 class folders" in err and "predicts 10 classes" in err, err
    assert not (model / "results.json").exists()
