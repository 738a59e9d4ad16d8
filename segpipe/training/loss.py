"""Losses: soft Dice + cross-entropy (classes, softmax), soft Dice + binary cross-entropy (regions, sigmoid), and
the deep-supervision wrapper.

Shapes: logits ``(B, C, *spatial)`` (``C`` classes, or one channel per region); targets are integer label maps
``(B, 1, *spatial)`` or ``(B, *spatial)``; region masks are made from them in the loss
(:func:`segpipe.dataset.regions.region_targets`). Voxels whose label is negative (outside the nonzero crop, or
unannotated: ``ignore``) are left out of every term.

Losses are registered by name (:data:`LOSSES`, ``@register_loss("name")``; plug-ins through ``segpipe.plugins``):
a factory ``factory(config: Configuration, regions: list[tuple[int, ...]] | None) -> nn.Module`` whose module is
called as ``loss(logits, target, meta)``, ``meta`` being the batch metadata (:data:`BatchMeta`). The trainer uses
the configuration's ``"loss"`` key in plans.json when there is one, else its own ``loss_name``, else
``dice-ce`` (``region-dice-bce`` for region-based training).
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from segpipe import plugins
from segpipe.dataset.regions import region_targets
from segpipe.errors import fail

if TYPE_CHECKING:
    from segpipe.planning.plans import Configuration

logger = logging.getLogger(__name__)

DICE_SMOOTH = 1e-5

BatchMeta = Mapping[str, Any]
"""What a loss learns about a batch besides logits and target: ``"mask"``, ``(B, 1, *S)`` bool, the valid voxels
(label >= 0) at the output's resolution; ``"level"``, the deep-supervision level (0: full resolution);
``"keys"``, the case id of each sample, when the batch carries them; and ``"attributes"``, each sample's case
attributes (column -> value, ``onboard --attributes``), when the data set has them."""

LossFactory = Callable[..., nn.Module]
"""``factory(config: Configuration, regions: list[tuple[int, ...]] | None) -> nn.Module``."""

LOSSES: dict[str, LossFactory] = {}


register_loss: plugins.Registrar[LossFactory] = plugins.Registrar("loss")
"""Decorator: ``@register_loss(name)`` makes ``factory`` the loss called ``name``."""


def get_loss(name: str) -> LossFactory:
    """The loss factory registered as ``name`` (a SegpipeError with a did-you-mean hint otherwise)."""
    factory: LossFactory = plugins.lookup(
        "loss", name, "use one of: {names} (the configuration's \"loss\" in plans.json, or the trainer's loss_name), "
        "or install the plug-in that provides it")
    return factory


def choose_loss(config: Configuration, regions: Sequence[Sequence[int]] | None, trainer_default: str | None) -> str:
    """The loss name for a configuration: its ``"loss"`` key in plans.json, else the trainer's, else the default
    for classes (``dice-ce``) or regions (``region-dice-bce``)."""
    planned = config.extra.get("loss")
    if planned is not None:
        return str(planned)
    if trainer_default is not None:
        return trainer_default
    return "region-dice-bce" if regions is not None else "dice-ce"


def accepts_meta(loss: nn.Module) -> bool:
    """Whether ``loss``'s forward takes the batch metadata (a ``meta`` parameter, or ``**kwargs``)."""
    try:
        params = inspect.signature(loss.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "meta" or p.kind is p.VAR_KEYWORD for p in params)


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

    def forward(self, logits: torch.Tensor, target: torch.Tensor, meta: BatchMeta | None = None) -> torch.Tensor:
        """logits ``(B, C, *S)``, target ``(B, 1, *S)`` or ``(B, *S)`` -> scalar (``meta`` is not needed: the
        target's negative labels are the invalid voxels)."""
        loss = logits.new_zeros(())
        if self.weight_ce:
            loss = loss + self.weight_ce * masked_cross_entropy(logits, target)
        if self.weight_dice:
            loss = loss + self.weight_dice * soft_dice_loss(logits, target, batch_dice=self.batch_dice)
        return loss


def soft_dice_regions(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, batch_dice: bool = False,
                      smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Negative mean soft Dice of sigmoid probabilities ``(B, R, *S)`` against region masks ``(B, R, *S)`` over
    ``valid`` voxels ``(B, 1, *S)``; every region counts (there is no background channel)."""
    probs = torch.sigmoid(logits.float()) * valid
    targets = targets * valid
    axes = ([0] if batch_dice else []) + list(range(2, logits.ndim))
    intersect = (probs * targets).sum(axes)
    denominator = probs.sum(axes) + targets.sum(axes)
    dice = (2 * intersect + smooth) / (denominator + smooth).clamp_min(1e-8)
    return -dice.mean()


class RegionDiceBCELoss(nn.Module):
    """Region-based training: ``weight_bce * BCE + weight_dice * soft Dice`` on one sigmoid output per region.

    ``regions``: per output channel, the label values that make up its region (e.g. ``[(1, 2), (2,)]``). The
    integer label map target is turned into region masks here; BCE is averaged over valid voxels and regions."""

    def __init__(self, regions: Sequence[Sequence[int]], weight_bce: float = 1.0, weight_dice: float = 1.0,
                 batch_dice: bool = False):
        super().__init__()
        self.regions = [tuple(int(v) for v in r) for r in regions]
        self.weight_bce, self.weight_dice, self.batch_dice = weight_bce, weight_dice, batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, meta: BatchMeta | None = None) -> torch.Tensor:
        """logits ``(B, R, *S)``, target ``(B, 1, *S)`` or ``(B, *S)`` integer label map -> scalar."""
        if logits.shape[1] != len(self.regions):
            raise ValueError(f"logits of {logits.shape[1]} channels for {len(self.regions)} regions")
        labels = _label_map(target, logits)
        valid = (labels >= 0).unsqueeze(1)
        targets = region_targets(labels, self.regions)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.weight_bce:
            per_voxel = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
            n_valid = valid.sum() * len(self.regions)
            loss = loss + self.weight_bce * (per_voxel * valid).sum() / n_valid.clamp_min(1)
        if self.weight_dice:
            loss = loss + self.weight_dice * soft_dice_regions(logits, targets, valid.to(torch.float32),
                                                               self.batch_dice)
        return loss


@register_loss("dice-ce")
def _dice_ce(config: Configuration, regions: Sequence[Sequence[int]] | None) -> nn.Module:
    """Soft Dice + cross-entropy over softmax classes (nnU-Net's default)."""
    if regions is not None:
        raise fail("the loss 'dice-ce' scores softmax classes, and this data set trains regions",
                   "use 'region-dice-bce' (leave out the configuration's \"loss\" to get it)")
    return DiceCELoss(batch_dice=config.batch_dice)


@register_loss("region-dice-bce")
def _region_dice_bce(config: Configuration, regions: Sequence[Sequence[int]] | None) -> nn.Module:
    """Soft Dice + binary cross-entropy, one sigmoid output per region."""
    if regions is None:
        raise fail("the loss 'region-dice-bce' needs regions, and this data set has none",
                   "use 'dice-ce' (leave out the configuration's \"loss\" to get it)")
    return RegionDiceBCELoss(regions, batch_dice=config.batch_dice)


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

    A single tensor output (deep supervision off) with a single target is passed to ``loss`` directly. With
    ``meta`` (:data:`BatchMeta`), a loss whose forward takes ``meta`` gets it per level, with that level's
    ``"mask"`` and ``"level"``.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights]
        self.takes_meta = accepts_meta(loss)

    def _level(self, output: torch.Tensor, target: torch.Tensor, meta: BatchMeta | None, level: int) -> torch.Tensor:
        if meta is None or not self.takes_meta:
            return self.loss(output, target)
        valid = target >= 0
        mask = valid if valid.ndim == output.ndim else valid.unsqueeze(1)
        return self.loss(output, target, meta={**meta, "mask": mask, "level": level})

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                targets: torch.Tensor | Sequence[torch.Tensor], meta: BatchMeta | None = None) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            target = targets if isinstance(targets, torch.Tensor) else targets[0]
            return self._level(outputs, target, meta, 0)
        if len(outputs) != len(targets) or len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets and {len(self.weights)} weights "
                             "do not match")
        total = outputs[0].new_zeros(())
        for level, (weight, output, target) in enumerate(zip(self.weights, outputs, targets)):
            if weight:
                total = total + weight * self._level(output, target, meta, level)
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
