"""Segmentation losses against a direct computation in float64: cross-entropy with ignore index and class weights,
and OHEM (hard pixels under the threshold, at least min_kept, ignore pixels never)."""

import math

import pytest
import torch

from iabn_zoo.train.losses import SegmentationLoss, hard_pixels

IGNORE = 255


def batch(seed: int, classes: int = 4, shape=(2, 5, 7)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], classes, *shape[1:], generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.25] = IGNORE
    return logits, target


def pixels(logits, target):
    """(true-class probability, -log of it, class) of every pixel that is not ignored, in a Python list."""
    out = []
    for n in range(target.shape[0]):
        for y in range(target.shape[1]):
            for x in range(target.shape[2]):
                c = int(target[n, y, x])
                if c == IGNORE:
                    continue
                row = [float(v) for v in logits[n, :, y, x]]
                top = max(row)
                log_sum = top + math.log(sum(math.exp(v - top) for v in row))
                out.append((math.exp(row[c] - log_sum), log_sum - row[c], c))
    return out


def test_cross_entropy_with_class_weights_is_the_weighted_mean_over_labelled_pixels():
    logits, target = batch(0)
    weights = [0.5, 2.0, 1.0, 3.0]
    total, normaliser = SegmentationLoss("ce", ignore_index=IGNORE, class_weights=weights)(logits, target)
    expected_sum = sum(weights[c] * loss for _, loss, c in pixels(logits, target))
    expected_norm = sum(weights[c] for _, _, c in pixels(logits, target))
    assert total.dtype == torch.float64
    assert float(total) == pytest.approx(expected_sum, rel=1e-12)
    assert float(normaliser) == pytest.approx(expected_norm, rel=1e-12)


def direct_ohem(logits, target, threshold, min_kept):
    """The kept pixels' mean loss, counted directly: under the threshold, or among the min_kept least probable."""
    found = pixels(logits, target)
    probabilities = sorted(p for p, _, _ in found)
    kth = probabilities[min(min_kept, len(found)) - 1]
    kept = [loss for p, loss, _ in found if p < threshold or p <= kth]
    return sum(kept) / len(kept), len(kept)


@pytest.mark.parametrize("threshold, min_kept", [
    (0.7, 5),      # many pixels under the threshold: the threshold decides
    (0.05, 40),    # few under it: the threshold rises to the 40th smallest probability
    (0.7, 10_000), # more than the batch holds: every labelled pixel counts
])
def test_ohem_keeps_the_hard_pixels_as_a_direct_computation_does(threshold, min_kept):
    logits, target = batch(1)
    total, normaliser = SegmentationLoss("ohem", ignore_index=IGNORE, threshold=threshold,
                                         min_kept=min_kept)(logits, target)
    expected, count = direct_ohem(logits, target, threshold, min_kept)
    labelled = int((target != IGNORE).sum())
    assert int(normaliser) == count and count >= min(min_kept, labelled)
    assert float(total / normaliser) == pytest.approx(expected, rel=1e-12), \
        f"OHEM loss {float(total / normaliser)} vs direct {expected} ({count} pixels kept)"
    if min_kept >= labelled:
        assert count == labelled


def test_ohem_never_keeps_ignored_pixels_and_backpropagates_only_through_kept_ones():
    logits, target = batch(2)
    logits.requires_grad_(True)
    kept = hard_pixels(logits, target, IGNORE, 0.3, 3)
    assert not kept[target == IGNORE].any()
    total, _ = SegmentationLoss("ohem", ignore_index=IGNORE, threshold=0.3, min_kept=3)(logits, target)
    total.backward()
    touched = logits.grad.abs().sum(dim=1) > 0
    assert torch.equal(touched, kept), "gradient reaches pixels OHEM did not keep (or misses kept ones)"


def test_a_batch_of_ignored_pixels_has_no_loss():
    logits, _ = batch(3)
    target = torch.full((2, 5, 7), IGNORE)
    for kind in ("ce", "ohem"):
        total, normaliser = SegmentationLoss(kind, ignore_index=IGNORE)(logits, target)
        assert float(total) == 0 and float(normaliser) == 0
