"""Metrics of label maps, per class. Arrays are integer label maps of the same shape, in array axis order;
``spacing`` is per axis in mm.

Overlap: Dice, IoU, precision, recall, volumes. Surface: the 95th percentile Hausdorff distance (HD95, mm; the
95th percentile of the pooled distances from each surface to the other, as medpy computes it) and the surface
Dice at a tolerance (mm): the fraction of both surfaces' voxels lying within the tolerance of the other surface.
Surfaces are the mask voxels with a 6- (3D) / 4- (2D) connected background neighbour.

A class absent from both prediction and reference has no defined value: metrics are NaN and the result carries
``"empty_reference_and_prediction": True`` instead of a silent 0 or 1. When only one side is empty, Dice is 0
and the distances are NaN (``"empty_prediction"`` / ``"empty_reference"`` flags).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

NAN = float("nan")


def confusion(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts for ``label``."""
    p, r = pred == label, ref == label
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, int(p.size) - tp - fp - fn


def mean_dice_per_class(pairs: list[tuple[np.ndarray, np.ndarray]], labels: dict[str, int]) -> dict[str, float]:
    """Mean Dice over (prediction, reference) pairs for each foreground class; cases where the class is absent
    from both are left out (NaN when that is every case)."""
    out = {}
    for name, v in labels.items():
        if v == 0:
            continue
        vals = []
        for pred, ref in pairs:
            tp, fp, fn, _ = confusion(pred, ref, v)
            if tp + fp + fn:
                vals.append(2 * tp / (2 * tp + fp + fn))
        out[name] = float(np.mean(vals)) if vals else NAN
    return out


def overlap_metrics(pred: np.ndarray, ref: np.ndarray, label: int, voxel_volume_mm3: float = 1.0) -> dict:
    """Dice, IoU, precision, recall and volumes (mm^3) of one class."""
    tp, fp, fn, _ = confusion(pred, ref, label)
    empty = tp + fp + fn == 0
    return {"dice": NAN if empty else 2 * tp / (2 * tp + fp + fn),
            "iou": NAN if empty else tp / (tp + fp + fn),
            "precision": (tp / (tp + fp)) if tp + fp else NAN,
            "recall": (tp / (tp + fn)) if tp + fn else NAN,
            "tp": tp, "fp": fp, "fn": fn,
            "volume_pred_mm3": (tp + fp) * voxel_volume_mm3, "volume_ref_mm3": (tp + fn) * voxel_volume_mm3,
            "empty_reference_and_prediction": empty,
            "empty_prediction": tp + fp == 0, "empty_reference": tp + fn == 0}


def _surface(mask: np.ndarray) -> np.ndarray:
    struct = generate_binary_structure(mask.ndim, 1)
    return mask & ~binary_erosion(mask, structure=struct, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of mask ``a`` to the surface of ``b``, and from ``b`` to ``a``.

    Both masks must be non-empty. Work is restricted to their joint bounding box (plus one voxel)."""
    both = a | b
    idx = np.argwhere(both)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, both.shape)
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    sa, sb = _surface(a[box]), _surface(b[box])
    da = distance_transform_edt(~sb, sampling=spacing)
    db = distance_transform_edt(~sa, sampling=spacing)
    return da[sa], db[sb]


def surface_metrics(pred: np.ndarray, ref: np.ndarray, label: int, spacing, tolerance_mm: float = 1.0) -> dict:
    """HD95 (mm) and surface Dice at ``tolerance_mm`` of one class."""
    p, r = pred == label, ref == label
    if not p.any() or not r.any():
        return {"hd95_mm": NAN, "surface_dice": NAN if not (p.any() or r.any()) else 0.0,
                "surface_tolerance_mm": tolerance_mm}
    d_pr, d_rp = surface_distances(p, r, spacing)
    hd95 = float(np.percentile(np.concatenate([d_pr, d_rp]), 95))
    sd = (np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)) / (d_pr.size + d_rp.size)
    return {"hd95_mm": hd95, "surface_dice": float(sd), "surface_tolerance_mm": tolerance_mm}


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int], spacing,
                 tolerance_mm: dict[str, float] | float = 1.0, surface: bool = True) -> dict[str, dict]:
    """All metrics of every foreground class of one case: ``{class name: {metric: value}}``."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    vox = float(np.prod(spacing))
    out = {}
    for name, value in labels.items():
        if value == 0:
            continue
        m = overlap_metrics(pred, ref, value, vox)
        if surface:
            tol = tolerance_mm.get(name, 1.0) if isinstance(tolerance_mm, dict) else tolerance_mm
            m.update(surface_metrics(pred, ref, value, spacing, tol))
        out[name] = m
    return out
