"""The official loss options (loss.py of github.com/shachoi/HANet): --cls-wt-loss and --img-wt-loss,
against hand computations on tiny tensors (plain Python arithmetic, not the code under test)."""

import math

import numpy as np
import pytest
import torch

import hanet_fast.train as train_cli
import hanet_fast.training.trainer as trainer_module
from hanet_fast.training.losses import (CLASS_WEIGHTS, image_class_weights, image_weighted_cross_entropy,
                                        segmentation_loss)
from test_train import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _nll(row, label):
    """-log softmax(row)[label] by hand."""
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def _pixels(logits, b, y, x):
    return [float(logits[b, c, y, x]) for c in range(logits.shape[1])]


def test_official_class_weights():
    # loss.py get_loss / get_loss_aux: the --cls_wt_loss weight vector, trainIds 0..18
    assert CLASS_WEIGHTS == (0.8373, 0.9180, 0.8660, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
                             0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


def test_class_weighted_loss_on_main_and_aux():
    torch.manual_seed(0)
    logits = torch.randn(1, 19, 2, 2)
    mask = torch.tensor([[[0, 5], [255, 18]]])
    aux_logits = torch.randn(1, 19, 1, 1)  # nearest-downsampled label: mask[0, 0, 0] = 0
    total, parts = segmentation_loss(logits, mask, aux_logits, 0.4, class_weighted=True)
    labelled = [((0, 0), 0), ((0, 1), 5), ((1, 1), 18)]
    num = sum(CLASS_WEIGHTS[c] * _nll(_pixels(logits, 0, y, x), c) for (y, x), c in labelled)
    main = num / sum(CLASS_WEIGHTS[c] for _, c in labelled)  # weighted mean, ignore left out
    aux = _nll(_pixels(aux_logits, 0, 0, 0), 0)  # one pixel: its weight cancels
    assert parts["main"].item() == pytest.approx(main, rel=1e-5)
    assert parts["aux"].item() == pytest.approx(aux, rel=1e-5)
    assert total.item() == pytest.approx(main + 0.4 * aux, rel=1e-5)
    # unweighted: the plain mean differs
    plain, _ = segmentation_loss(logits, mask)
    unweighted = sum(_nll(_pixels(logits, 0, y, x), c) for (y, x), c in labelled) / 3
    assert plain.item() == pytest.approx(unweighted, rel=1e-5) and abs(plain.item() - main) > 1e-4
    with pytest.raises(ValueError, match="19 classes"):
        segmentation_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), class_weighted=True)


# Two images of 1 x 4 pixels, 3 classes.
MASK = torch.tensor([[[0, 0, 1, 255]], [[2, 2, 2, 2]]])


def test_image_class_weights_by_hand():
    w = image_class_weights(MASK, 3)
    # image 0: 3 labelled pixels, fractions 2/3, 1/3, 0 -> 1 + (1 - f) where present, 1 where absent
    assert w[0].tolist() == pytest.approx([1 + 1 / 3, 1 + 2 / 3, 1.0])
    # image 1: all class 2 -> 1 + (1 - 1) = 1; absent classes 1
    assert w[1].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # the upper bound scales the boost: 1 + 2 (1 - f)
    assert image_class_weights(MASK, 3, wt_bound=2.0)[0].tolist() == pytest.approx([1 + 2 / 3, 1 + 4 / 3, 1.0])
    # no labelled pixel: 0 / 0
    assert torch.isnan(image_class_weights(torch.full((1, 2, 2), 255), 3)).all()


def _official_like(logits, mask, num_classes, batch_weighting, wt_bound=1.0):
    """ImageBasedCrossEntropyLoss2d's algorithm step by step: numpy's normalised histogram over
    bins 0..num_classes, weights, then per image a weighted NLL mean, summed over images."""
    def weights(target):
        hist = np.histogram(target.flatten(), range(num_classes + 1), density=True)[0]
        return (hist != 0) * wt_bound * (1 - hist) + 1

    total = 0.0
    batch_w = weights(mask.numpy()) if batch_weighting else None
    for i in range(mask.shape[0]):
        w = batch_w if batch_weighting else weights(mask[i].numpy())
        num = den = 0.0
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                c = int(mask[i, y, x])
                if c == 255:
                    continue
                num += w[c] * _nll(_pixels(logits, i, y, x), c)
                den += w[c]
        total += num / den
    return total


@pytest.mark.parametrize("batch_weighting", [False, True])
@pytest.mark.parametrize("wt_bound", [1.0, 2.5])
def test_image_weighted_loss_by_hand(batch_weighting, wt_bound):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 1, 4, requires_grad=True)
    loss = image_weighted_cross_entropy(logits, MASK, wt_bound, batch_weighting)
    assert loss.item() == pytest.approx(_official_like(logits.detach(), MASK, 3, batch_weighting, wt_bound), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_image_weighted_loss_written_out():
    """One case fully by hand: per-image weighted means, summed (not averaged) over the batch."""
    logits = torch.zeros(2, 3, 1, 4)
    logits[0, 0, 0, 0] = 1.0  # pixel (0, 0): class 0 favoured
    n0 = math.log(math.e + 2) - 1  # nll of class 0 at that pixel
    n = math.log(3)  # nll of any class where all logits are 0
    w0, w1 = 4 / 3, 5 / 3  # image 0's weights of classes 0 and 1
    image0 = (w0 * n0 + w0 * n + w1 * n) / (w0 + w0 + w1)
    image1 = n  # uniform weights, all logits 0
    assert image_weighted_cross_entropy(logits, MASK).item() == pytest.approx(image0 + image1, rel=1e-6)
    # batch weighting: one histogram over both images, 7 labelled pixels: fractions 2/7, 1/7, 4/7
    b0, b1 = 1 + 5 / 7, 1 + 6 / 7  # image 1 is all class 2: its weight cancels
    image0 = (b0 * n0 + b0 * n + b1 * n) / (2 * b0 + b1)
    assert image_weighted_cross_entropy(logits, MASK, batch_weighting=True).item() == pytest.approx(
        image0 + n, rel=1e-6)


def test_image_without_labels_adds_zero():
    logits = torch.randn(2, 3, 1, 4, requires_grad=True)
    mask = MASK.clone()
    mask[1] = 255
    loss = image_weighted_cross_entropy(logits, mask)
    assert loss.item() == pytest.approx(image_weighted_cross_entropy(logits[:1], mask[:1]).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()


def test_image_weighting_replaces_class_weights_on_main_only():
    """As loss.py: --img_wt_loss picks the main criterion; the auxiliary one stays the
    (class-weighted) cross-entropy."""
    torch.manual_seed(2)
    logits, aux_logits = torch.randn(2, 19, 1, 4), torch.randn(2, 19, 1, 2)
    _, parts = segmentation_loss(logits, MASK, aux_logits, 0.4, class_weighted=True, image_weighted=True)
    assert parts["main"].item() == pytest.approx(image_weighted_cross_entropy(logits, MASK).item(), rel=1e-6)
    _, class_only = segmentation_loss(logits, MASK, aux_logits, 0.4, class_weighted=True)
    assert parts["aux"].item() == pytest.approx(class_only["aux"].item(), rel=1e-6)


@pytest.mark.parametrize("argv", [["--batch-weighting"], ["--wt-bound", "2"], ["--img-wt-loss", "--wt-bound", "-1"],
                                  ["--img-wt-loss", "--wt-bound", "nan"]])
def test_loss_flag_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_cli.resolve_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--wt-bound" in err or "--batch-weighting" in err


def test_training_loop_uses_the_loss_flags(tmp_path, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return segmentation_loss(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "segmentation_loss", spy)
    train_cli.main(TINY + ["--iters", "2", "--stop-after", "1", "--workers", "0", "--out", str(tmp_path / "run"),
                           "--cache-dir", str(tmp_path / "cache"), "--cls-wt-loss", "--img-wt-loss",
                           "--batch-weighting", "--wt-bound", "0.5"])
    assert seen == [dict(class_weighted=True, image_weighted=True, batch_weighting=True, wt_bound=0.5)]
