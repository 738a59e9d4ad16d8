"""Bidirectional copy-paste (Bai et al., CVPR 2023) on batches: the box mask, the two mixing directions and the
teacher's pseudo-labels reduced to their largest component.

Shapes: images ``(B, C, *S)``, label maps ``(B, *S)`` or ``(B, 1, *S)`` with -1 for voxels that are not a
target (outside the image, unannotated); ``S`` is the patch, ``(Z, Y, X)`` or ``(Y, X)``, in voxels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

BOX_FRACTION = 2 / 3  # the pasted box spans this share of every axis of the patch (BCP's setting)
IGNORED = -1          # label value left out of the loss


def box_mask(patch: Sequence[int], rng: np.random.Generator, fraction: float = BOX_FRACTION) -> np.ndarray:
    """A bool mask of shape ``patch`` that is True in one box of ``round(fraction * n)`` voxels along every
    axis (at least 1), placed uniformly at random inside the patch."""
    mask = np.zeros(tuple(int(n) for n in patch), dtype=bool)
    box = []
    for n in patch:
        size = min(int(n), max(1, round(fraction * int(n))))
        lo = int(rng.integers(0, int(n) - size + 1))
        box.append(slice(lo, lo + size))
    mask[tuple(box)] = True
    return mask


def largest_components(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Pseudo-labels cleaned as BCP does: per sample and per foreground class, only the largest connected
    component (full connectivity) keeps the class; the other components become background (0). ``labels``:
    ``(B, *S)`` integer class map (negative values are kept as they are). Returns a new array."""
    out = labels.copy()
    structure = ndimage.generate_binary_structure(labels.ndim - 1, labels.ndim - 1)
    for b in range(labels.shape[0]):
        for c in range(1, n_classes):
            components, n = ndimage.label(labels[b] == c, structure=structure)
            if n > 1:
                sizes = np.bincount(components.ravel())[1:]
                out[b][(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def mix_both_ways(labelled: torch.Tensor, label: torch.Tensor, unlabelled: torch.Tensor, pseudo: torch.Tensor,
                  masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy-paste labelled sample ``i`` with unlabelled sample ``i`` in both directions.

    ``labelled``/``unlabelled``: ``(B, C, *S)``; ``label``/``pseudo``: ``(B, 1, *S)`` (reference, and the
    teacher's pseudo-label with -1 outside the image); ``masks``: ``(B, *S)`` bool boxes. The first ``ceil(B/2)``
    samples paste the unlabelled box into the labelled image ("inward"), the others the labelled box into the
    unlabelled image ("outward"). Returns ``(images (B, C, *S), reference targets, pseudo targets)``: each
    target keeps the voxels that came from its kind of image and holds -1 (ignored) elsewhere, so that the
    loss can weight the two kinds separately.
    """
    b = labelled.shape[0]
    inward = torch.arange(b, device=masks.device) < (b + 1) // 2
    view = (b,) + (1,) * (masks.ndim - 1)
    # True where the voxel comes from the unlabelled image: inside the box inward, outside it outward
    from_unlabelled = torch.where(inward.view(view), masks, ~masks).unsqueeze(1)  # (B, 1, *S)
    images = torch.where(from_unlabelled, unlabelled, labelled)
    ignored = torch.full_like(label, IGNORED)
    reference = torch.where(from_unlabelled, ignored, label)
    pseudo_target = torch.where(from_unlabelled, pseudo.to(label.dtype), ignored)
    return images, reference, pseudo_target
