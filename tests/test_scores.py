"""How each task's predictions are scored, on hand-computed cases: top-1/top-5, mIoU and pixel
accuracy (255 ignored, absent classes left out of the mean), AbsRel, RMSE and δ<1.25 (pixels
without depth left out), and sums that add up over batches."""

import math

import pytest
import torch

from snnet.measure.scores import scorer_for, silog
from snnet.task import Task


def one_hot_logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float()


def test_segmentation_miou_and_pixel_accuracy():
    scorer = scorer_for(Task("segmentation", num_classes=3))
    target = torch.tensor([[[0, 0, 1, 1], [1, 255, 255, 0]]])  # (1, 2, 4); class 2 absent
    pred = torch.tensor([[[0, 1, 1, 1], [1, 2, 0, 0]]])
    stats = scorer.batch(one_hot_logits(pred, 3), target)
    # class 0: hits 2 of union 3 (a target 0 read as 1); class 1: hits 3 of union 4
    values = scorer.values(stats, images=1)
    assert values["pixel_acc"] == pytest.approx(100 * 5 / 6)
    # class 2 is predicted on an ignored pixel only: it is in no union, so out of the mean
    assert values["miou"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)
    halves = scorer.batch(one_hot_logits(pred[..., :2], 3), target[..., :2])
    halves += scorer.batch(one_hot_logits(pred[..., 2:], 3), target[..., 2:])
    assert torch.equal(halves, stats)  # sums over batches


def test_a_class_neither_labelled_nor_predicted_is_left_out_of_the_mean():
    scorer = scorer_for(Task("segmentation", num_classes=4))
    target = torch.tensor([[[0, 1]]])
    values = scorer.values(scorer.batch(one_hot_logits(target, 4), target), images=1)
    assert values == {"miou": 100.0, "pixel_acc": 100.0}


def test_depth_metrics_over_pixels_with_a_depth():
    scorer = scorer_for(Task("depth"))
    target = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])  # the last pixel has no depth
    output = torch.tensor([[[1.1, 2.0, 2.0, 9.0]]])
    values = scorer.values(scorer.batch(output, target), images=1)
    assert values["absrel"] == pytest.approx((0.1 + 0 + 0.5) / 3)
    assert values["rmse"] == pytest.approx(math.sqrt((0.01 + 0 + 4) / 3))
    assert values["delta1"] == pytest.approx(100 * 2 / 3)  # 4 m read as 2 m is off by 2x


def test_silog_is_zero_for_a_right_prediction_and_ignores_missing_depth():
    target = torch.tensor([[2.0, 3.0, 0.0]])
    assert float(silog(target.clamp_min(1e-3), target)) == pytest.approx(0, abs=1e-3)
    assert float(silog(torch.tensor([[4.0, 6.0, 1.0]]), target)) > 0


def test_classification_counts_top1_and_top5_hits():
    scorer = scorer_for(None)
    logits = torch.eye(6)[[0, 1, 2]] + torch.arange(6) * 0.01  # argmax 0, 1, 2
    stats = scorer.batch(logits, torch.tensor([0, 5, 3]))
    assert stats.tolist() == [1, 3] and scorer.values(stats, 3)["top1"] == pytest.approx(100 / 3)
