"""Fingerprint of one case: geometry, crop-to-nonzero box, and a sample of foreground intensities."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from segpipe.io.images import Geometry
from segpipe.preprocessing.cropping import bbox_of, crop, nonzero_mask


def orientation_code(direction: tuple[float, ...]) -> str:
    """Three-letter anatomical orientation (DICOM/LPS convention, as SimpleITK reports it); '' for 2D."""
    if len(direction) != 9:
        return ""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(list(direction))


def fingerprint_case(data: np.ndarray, label: np.ndarray, geometry: Geometry, n_samples: int,
                     seed: int) -> dict:
    """Fingerprint one case.

    ``data``: ``(c, ...)`` float32, ``label``: ``(...)`` integer; spatial axes in array order. Foreground is
    ``label > 0`` inside the nonzero crop. Up to ``n_samples`` foreground voxels per channel are drawn without
    replacement (all of them when there are fewer), seeded by ``seed``. Returns a JSON-ready dict plus
    ``"samples"``: a list with one float32 array per channel (removed before writing).
    """
    box = bbox_of(nonzero_mask(data))
    d, lab = crop(data, box), crop(label, box)
    shape_after = [int(s) for s in d.shape[1:]]
    fg = lab > 0
    n_fg = int(np.count_nonzero(fg))
    rng = np.random.default_rng(seed)
    idx = None
    if n_fg > n_samples:
        idx = np.sort(rng.choice(n_fg, size=n_samples, replace=False))
    samples = []
    for c in range(d.shape[0]):
        vals = d[c][fg]
        samples.append((vals[idx] if idx is not None else vals).astype(np.float32))
    return {
        "shape": list(geometry.shape),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(geometry.direction),
        "orientation": orientation_code(geometry.direction),
        "crop_bbox": box,
        "shape_after_crop": shape_after,
        "relative_size_after_crop": float(np.prod(shape_after) / np.prod(geometry.shape)),
        "foreground_voxels": n_fg,
        "samples": samples,
    }
