"""Tests of segpipe/training/loss.py: soft Dice, cross-entropy, masking, deep supervision."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segpipe.networks import build_network
from segpipe.training.loss import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    downsample_targets,
    masked_cross_entropy,
    soft_dice_loss,
)

STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]]


def _labels(shape=(2, 1, 4, 6, 5), n_classes=3, seed=0):
    return torch.randint(0, n_classes, shape, generator=torch.Generator().manual_seed(seed))


def _onehot_logits(labels, n_classes=3, scale=30.0):
    return scale * F.one_hot(labels[:, 0], n_classes).movedim(-1, 1).float()


@pytest.mark.parametrize("batch_dice", [False, True])
def test_perfect_prediction_reaches_the_dice_minimum(batch_dice):
    labels = _labels()
    logits = _onehot_logits(labels)
    assert soft_dice_loss(logits, labels, batch_dice=batch_dice).item() == pytest.approx(-1.0, abs=1e-4)
    wrong = _onehot_logits((labels + 1) % 3)
    assert soft_dice_loss(wrong, labels, batch_dice=batch_dice).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_matches_a_hand_computed_value_and_skips_background():
    # one sample, four voxels, target [1, 1, 0, 0]; class-1 probabilities [0.8, 0.6, 0.3, 0.1]
    p1 = torch.tensor([0.8, 0.6, 0.3, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p1 / (1 - p1))]).reshape(1, 2, 1, 4)
    target = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 4)
    expected = -(2 * 1.4 + 1e-5) / (1.8 + 2.0 + 1e-5)  # background class not included
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_batch_dice_pools_samples_before_the_ratio():
    # sample 0: class 1 perfectly predicted on 1 voxel; sample 1: class 1 absent but predicted on 1 voxel
    logits = torch.full((2, 2, 1, 2), -30.0)
    logits[:, 0] = 0.0
    logits[0, 1, 0, 0] = 30.0
    logits[1, 1, 0, 0] = 30.0
    target = torch.zeros(2, 1, 2, dtype=torch.long)
    target[0, 0, 0] = 1
    per_sample = soft_dice_loss(logits, target, batch_dice=False).item()
    pooled = soft_dice_loss(logits, target, batch_dice=True).item()
    assert per_sample == pytest.approx(-(1.0 + 0.0) / 2, abs=1e-4)  # sample 1 scores ~0
    assert pooled == pytest.approx(-2 / 3, abs=1e-4)                # 2*1 / (2 + 1)


@pytest.mark.parametrize("squeeze", [False, True])
def test_cross_entropy_equals_torch(squeeze):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 5)
    labels = _labels()
    target = labels[:, 0] if squeeze else labels
    expected = F.cross_entropy(logits, labels[:, 0])
    torch.testing.assert_close(masked_cross_entropy(logits, target), expected)
    torch.testing.assert_close(DiceCELoss(weight_ce=1, weight_dice=0)(logits, target), expected)
    combined = DiceCELoss(weight_ce=2, weight_dice=0.5)(logits, target)
    torch.testing.assert_close(combined, 2 * expected + 0.5 * soft_dice_loss(logits, target))


@pytest.mark.parametrize("batch_dice", [False, True])
def test_masked_voxels_do_not_change_the_loss(batch_dice):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 5)
    labels = _labels()
    labels[:, :, 0] = -1  # first z slice lies outside the nonzero crop
    loss = DiceCELoss(batch_dice=batch_dice)
    reference = loss(logits, labels)
    scrambled = logits.clone()
    scrambled[:, :, 0] = 100 * torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(loss(scrambled, labels), reference)
    # CE over the valid voxels only, like torch's ignore_index
    torch.testing.assert_close(masked_cross_entropy(logits, labels),
                               F.cross_entropy(logits, labels[:, 0], ignore_index=-1))
    # and no gradient flows into masked voxels
    logits.requires_grad_(True)
    loss(logits, labels).backward()
    assert torch.count_nonzero(logits.grad[:, :, 0]) == 0 and torch.count_nonzero(logits.grad[:, :, 1:]) > 0


def test_all_voxels_masked_gives_finite_loss():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = DiceCELoss()(logits, torch.full((1, 2, 2), -1))
    assert torch.isfinite(loss)
    loss.backward()


def test_deep_supervision_weights_halve_zero_the_coarsest_and_sum_to_one():
    assert deep_supervision_weights(4) == pytest.approx([0.5714, 0.2857, 0.1429, 0.0], abs=1e-4)
    assert deep_supervision_weights(1) == [1.0]
    weights = deep_supervision_weights(6)
    assert sum(weights) == pytest.approx(1.0) and weights[-1] == 0.0
    assert all(a == pytest.approx(2 * b) for a, b in zip(weights[:-2], weights[1:-1]))


def test_downsample_targets_subsamples_by_cumulative_strides():
    target = torch.arange(2 * 12 * 16 * 8).reshape(2, 1, 12, 16, 8)
    pyramid = downsample_targets(target, STRIDES_3D)
    assert [tuple(t.shape) for t in pyramid] == [(2, 1, 12, 16, 8), (2, 1, 12, 8, 4), (2, 1, 6, 4, 2)]
    assert torch.equal(pyramid[0], target)
    assert pyramid[2][1, 0, 3, 2, 1] == target[1, 0, 6, 8, 4]  # cumulative stride (2, 4, 4)
    squeezed = downsample_targets(target[:, 0], [[1, 1], [2, 2], [2, 2]])  # 2D strides on (B, Y, X) maps
    assert [tuple(t.shape[-2:]) for t in squeezed] == [(16, 8), (8, 4)]


def test_deep_supervision_loss_weights_levels_and_skips_zero_weights():
    torch.manual_seed(0)
    base = DiceCELoss()
    outputs = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)]
    targets = downsample_targets(_labels((1, 1, 8, 8)), [[1, 1], [2, 2], [2, 2], [2, 2]])
    weights = deep_supervision_weights(3)
    expected = sum(w * base(o, t) for w, o, t in zip(weights, outputs, targets))
    torch.testing.assert_close(DeepSupervisionLoss(base, weights)(outputs, targets), expected)
    # the zero-weighted coarsest level is never evaluated (a mismatched target there would raise)
    bad_targets = targets[:2] + [torch.zeros(1, 1, 5, 5, dtype=torch.long)]
    torch.testing.assert_close(DeepSupervisionLoss(base, weights)(outputs, bad_targets), expected)
    # deep supervision off: one tensor in, the plain loss out
    torch.testing.assert_close(DeepSupervisionLoss(base, weights)(outputs[0], targets[0]), base(outputs[0], targets[0]))


def test_target_pyramid_matches_network_outputs():
    torch.manual_seed(0)
    plan = {"name": "plain", "n_stages": 4, "features_per_stage": [4, 8, 8, 8],
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": STRIDES_3D,
            "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1]}
    net = build_network(plan, in_channels=1, n_classes=3)
    outputs = net(torch.randn(2, 1, 4, 16, 8))
    targets = downsample_targets(_labels((2, 1, 4, 16, 8)), plan["strides"])
    assert [o.shape[2:] for o in outputs] == [t.shape[2:] for t in targets]
    loss = DeepSupervisionLoss(DiceCELoss(), deep_supervision_weights(len(outputs)))(outputs, targets)
    loss.backward()
    assert torch.isfinite(loss)
