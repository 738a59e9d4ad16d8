"""Metrics of label maps, per class. Arrays are integer label maps of the same shape, in array axis order;
``spacing`` is per axis in mm.

Overlap: Dice, IoU, precision, recall, volumes. Surface: the 95th percentile Hausdorff distance (HD95, mm; the
95th percentile of the pooled distances from each surface to the other, as medpy computes it) and the surface
Dice at a tolerance (mm): the fraction of both surfaces' voxels lying within the tolerance of the other surface.
Surfaces are the mask voxels with a 6- (3D) / 4- (2D) connected background neighbour.

A class absent from both prediction and reference has no defined value: metrics are NaN and the result carries
``"empty_reference_and_prediction": True`` instead of a silent 0 or 1. When only one side is empty, Dice is 0,
surface Dice is 0 and HD95 is NaN (undefined: ``"empty_prediction"`` / ``"empty_reference"`` flags); the summary
(:mod:`segpipe.evaluation.summary`) counts such cases as missed / spurious instead of letting them vanish.

Sparse annotations: a label named ``ignore`` (nnU-Net's convention, :data:`segpipe.dataset.model.IGNORE_LABEL`)
marks unannotated reference voxels. They count for no class: the prediction there is ignored
(:func:`blank_unannotated`) and ``ignore`` gets no metrics of its own; only annotated voxels are compared.

Regions (region-based training, :mod:`segpipe.dataset.regions`): a label whose value is a tuple of label values
is scored on its region, ``np.isin(label_map, region)`` in the prediction and the reference alike.

The per-case record is ``{class name: ClassMetrics}`` (:data:`CaseRecord`), made by :func:`case_metrics` from
arrays or by :func:`record_from_counts` from voxel counts alone.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from segpipe.dataset.model import LabelValue, ignore_value, output_classes
from segpipe.dataset.regions import class_mask

NAN = float("nan")

Counts = tuple[int, int, int]  # (tp, fp, fn) voxel counts of one class in one case


class ClassMetrics(TypedDict, total=False):
    """Metrics of one class in one case. Counts in voxels, volumes in mm^3, distances in mm; NaN = undefined.

    The overlap keys are always there; ``hd95_mm``, ``surface_dice`` and ``surface_tolerance_mm`` only when
    surface metrics were computed."""

    dice: float
    iou: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    volume_pred_mm3: float
    volume_ref_mm3: float
    empty_reference_and_prediction: bool
    empty_prediction: bool
    empty_reference: bool
    hd95_mm: float
    surface_dice: float
    surface_tolerance_mm: float


CaseRecord = dict[str, ClassMetrics]  # the per-case record: class name -> its metrics


def confusion(pred: np.ndarray, ref: np.ndarray, label: LabelValue) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts for ``label`` (a value, or a region: a tuple of values)."""
    p, r = class_mask(pred, label), class_mask(ref, label)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, int(p.size) - tp - fp - fn


def overlap_from_counts(tp: int, fp: int, fn: int, voxel_volume_mm3: float = 1.0) -> ClassMetrics:
    """Dice, IoU, precision, recall and volumes (mm^3) of one class from its voxel counts."""
    empty = tp + fp + fn == 0
    return {"dice": NAN if empty else 2 * tp / (2 * tp + fp + fn),
            "iou": NAN if empty else tp / (tp + fp + fn),
            "precision": (tp / (tp + fp)) if tp + fp else NAN,
            "recall": (tp / (tp + fn)) if tp + fn else NAN,
            "tp": tp, "fp": fp, "fn": fn,
            "volume_pred_mm3": (tp + fp) * voxel_volume_mm3, "volume_ref_mm3": (tp + fn) * voxel_volume_mm3,
            "empty_reference_and_prediction": empty,
            "empty_prediction": tp + fp == 0, "empty_reference": tp + fn == 0}


def overlap_metrics(pred: np.ndarray, ref: np.ndarray, label: LabelValue,
                    voxel_volume_mm3: float = 1.0) -> ClassMetrics:
    """Dice, IoU, precision, recall and volumes (mm^3) of one class."""
    tp, fp, fn, _ = confusion(pred, ref, label)
    return overlap_from_counts(tp, fp, fn, voxel_volume_mm3)


def unannotated(ref: np.ndarray, labels: Mapping[str, LabelValue]) -> np.ndarray | None:
    """Where ``ref`` holds the ``ignore`` label (a boolean mask of its shape), or None when it has none."""
    v = ignore_value(labels)
    if v is None:
        return None
    mask = ref == v
    return mask if mask.any() else None


def blank_unannotated(pred: np.ndarray, ref: np.ndarray, labels: Mapping[str, LabelValue]) -> np.ndarray:
    """``pred`` with background where ``ref`` is unannotated (``ignore``), so those voxels count for no class;
    ``pred`` itself when there are none (no copy)."""
    mask = unannotated(ref, labels)
    return pred if mask is None else np.where(mask, 0, pred)


def class_counts(pred: np.ndarray, ref: np.ndarray, labels: Mapping[str, LabelValue]) -> dict[str, Counts]:
    """(tp, fp, fn) voxel counts of every foreground class (value != 0, not ``ignore``) of one case, over the
    annotated voxels."""
    pred = blank_unannotated(pred, ref, labels)
    return {name: confusion(pred, ref, v)[:3] for name, v in output_classes(labels).items() if v != 0}


def record_from_counts(counts: Mapping[str, Counts], voxel_volume_mm3: float = 1.0) -> CaseRecord:
    """The per-case record (overlap metrics only) from per-class (tp, fp, fn) voxel counts."""
    return {name: overlap_from_counts(*c, voxel_volume_mm3) for name, c in counts.items()}


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


def surface_metrics(pred: np.ndarray, ref: np.ndarray, label: LabelValue, spacing, tolerance_mm: float = 1.0
                    ) -> ClassMetrics:
    """HD95 (mm) and surface Dice at ``tolerance_mm`` of one class. One side empty: HD95 NaN (undefined),
    surface Dice 0; both empty: both NaN."""
    p, r = class_mask(pred, label), class_mask(ref, label)
    if not p.any() or not r.any():
        return {"hd95_mm": NAN, "surface_dice": NAN if not (p.any() or r.any()) else 0.0,
                "surface_tolerance_mm": tolerance_mm}
    d_pr, d_rp = surface_distances(p, r, spacing)
    hd95 = float(np.percentile(np.concatenate([d_pr, d_rp]), 95))
    sd = (np.count_nonzero(d_pr <= tolerance_mm) + np.count_nonzero(d_rp <= tolerance_mm)) / (d_pr.size + d_rp.size)
    return {"hd95_mm": hd95, "surface_dice": float(sd), "surface_tolerance_mm": tolerance_mm}


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels: Mapping[str, LabelValue], spacing,
                 tolerance_mm: dict[str, float] | float = 1.0, surface: bool = True) -> CaseRecord:
    """All metrics of every foreground class of one case: ``{class name: {metric: value}}``.

    ``pred`` and ``ref``: label maps of the same shape, ``(z, y, x)`` or ``(y, x)``; ``spacing`` in mm per
    axis in the same order; ``tolerance_mm``: surface Dice tolerance, one for all classes or per class name.
    ``surface=False`` leaves out HD95 and surface Dice (overlap metrics only)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    vox = float(np.prod(spacing))
    pred = blank_unannotated(pred, ref, labels)
    out: CaseRecord = {}
    for name, value in output_classes(labels).items():
        if value == 0:
            continue
        m = overlap_metrics(pred, ref, value, vox)
        if surface:
            tol = tolerance_mm.get(name, 1.0) if isinstance(tolerance_mm, dict) else tolerance_mm
            m.update(surface_metrics(pred, ref, value, spacing, tol))
        out[name] = m
    return out
