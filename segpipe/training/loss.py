"""Losses: soft Dice + cross-entropy, and its deep-supervision wrapper.

Shapes: logits ``(B, C, *spatial)``; targets are integer label maps ``(B, 1, *spatial)`` or ``(B, *spatial)``.
Voxels whose label is negative (outside the nonzero crop) are ignored by both Dice and cross-entropy.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

DICE_SMOOTH = 1e-5


def _label_map(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *S)`` or ``(B, *S)`` -> ``(B, *S)`` int64, checked against logits ``(B, C, *S)``."""
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(f"target of shape {tuple(target.shape)} must have one channel")
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target of shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    return target.long()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = False, do_bg: bool = False,
                   smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Negative mean soft Dice of softmax probabilities vs one-hot targets; its minimum is -1 (perfect).

    Per class: ``(2 * sum(p * y) + smooth) / (sum(p) + sum(y) + smooth)``, summed over the spatial axes (and
    the batch axis when ``batch_dice``), over valid voxels only; averaged over classes (background excluded
    unless ``do_bg``) and samples.
    """
    labels = _label_map(target, logits)
    valid = (labels >= 0).unsqueeze(1).to(logits.dtype)  # (B, 1, *S)
    probs = torch.softmax(logits, dim=1) * valid
    onehot = torch.zeros_like(logits).scatter_(1, labels.clamp_min(0).unsqueeze(1), 1.0) * valid
    if not do_bg:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = ([0] if batch_dice else []) + list(range(2, logits.ndim))
    intersect = (probs * onehot).sum(axes)
    denominator = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + smooth) / (denominator + smooth).clamp_min(1e-8)
    return -dice.mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over valid voxels (label >= 0); 0 when no voxel is valid."""
    labels = _label_map(target, logits)
    valid = labels >= 0
    per_voxel = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    n_valid = valid.sum()
    return (per_voxel * valid).sum() / n_valid.clamp_min(1)


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * soft Dice loss`` (Dice without background; minimum ``-weight_dice``)."""

    def __init__(self, weight_ce: float = 1.0, weight_dice: float = 1.0, batch_dice: bool = False):
        super().__init__()
        self.weight_ce, self.weight_dice, self.batch_dice = weight_ce, weight_dice, batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits ``(B, C, *S)``, target ``(B, 1, *S)`` or ``(B, *S)`` -> scalar."""
        loss = logits.new_zeros(())
        if self.weight_ce:
            loss = loss + self.weight_ce * masked_cross_entropy(logits, target)
        if self.weight_dice:
            loss = loss + self.weight_dice * soft_dice_loss(logits, target, batch_dice=self.batch_dice)
        return loss


def deep_supervision_weights(n: int) -> list[float]:
    """Weights for ``n`` outputs, full resolution first: halving per level, the coarsest 0, summing to 1.

    ``n = 4`` gives ``[4/7, 2/7, 1/7, 0]``; ``n = 1`` gives ``[1.0]``.
    """
    if n < 1:
        raise ValueError(f"need at least one output, got {n}")
    weights = [0.5 ** i for i in range(n)]
    if n > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss(outputs[i], targets[i])``; levels with weight 0 are not computed.

    A single tensor output (deep supervision off) with a single target is passed to ``loss`` directly.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                targets: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            target = targets if isinstance(targets, torch.Tensor) else targets[0]
            return self.loss(outputs, target)
        if len(outputs) != len(targets) or len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets and {len(self.weights)} weights "
                             "do not match")
        total = outputs[0].new_zeros(())
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight:
                total = total + weight * self.loss(output, target)
            else:  # keep the head in the graph (zero gradient) so DDP sees every parameter used
                total = total + 0.0 * output.sum()
        return total


def downsample_targets(target: torch.Tensor, strides: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Target pyramid matching a deep-supervised network's outputs, full resolution first.

    ``target``: ``(B, 1, *S)`` or ``(B, *S)``; ``strides``: the network plan's per-stage strides (``n_stages``
    entries). Returns ``n_stages - 1`` label maps; level ``l`` is the nearest-neighbour subsampling (every k-th
    voxel from the first) by the product of ``strides[0..l]``, shape ``(..., *S / cumulative stride)``.
    """
    ndim = len(strides[0])
    if target.ndim < ndim + 1:
        raise ValueError(f"target of shape {tuple(target.shape)} has fewer than {ndim} spatial axes plus batch")
    lead = (slice(None),) * (target.ndim - ndim)
    cumulative = [1] * ndim
    pyramid = []
    for stride in strides[:-1]:
        cumulative = [c * s for c, s in zip(cumulative, stride)]
        pyramid.append(target[lead + tuple(slice(None, None, c) for c in cumulative)])
    return pyramid
