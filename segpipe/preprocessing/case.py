"""Preprocessing of one case: make 3D, crop to nonzero, mark outside-mask background, normalize, resample,
sample foreground locations (nnU-Net's order).

Internally every case is 3D: a 2D case ``(c, y, x)`` becomes ``(c, 1, y, x)`` with spacing
``[DUMMY_2D_SPACING, sy, sx]``; ``props["ndim"]`` keeps the raw dimensionality so that export can squeeze back.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segpipe.axes import SpacingMM
from segpipe.io.images import Geometry
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.cropping import bbox_of, crop, nonzero_mask
from segpipe.preprocessing.memory_check import check_resampled_size
from segpipe.preprocessing.normalization import normalize
from segpipe.preprocessing.resampling import new_shape, resample_image, resample_label

DUMMY_2D_SPACING = 999.0           # z spacing given to 2D cases made 3D (never resampled along z)
MAX_CLASS_LOCATIONS = 10_000       # foreground voxel coordinates stored per class, for oversampling in training
OUTSIDE_MASK = -1                  # label value of background voxels outside the nonzero mask


def to_3d(data: np.ndarray, label: np.ndarray | None, spacing: SpacingMM
          ) -> tuple[np.ndarray, np.ndarray | None, list[float]]:
    """A 2D case ``(c, y, x)`` as ``(c, 1, y, x)`` with spacing ``[DUMMY_2D_SPACING, sy, sx]``; 3D unchanged."""
    out = [float(s) for s in spacing]
    if data.ndim == 3:
        data = data[:, None]
        label = None if label is None else label[None]
        out = [DUMMY_2D_SPACING, *out]
    if data.ndim != 4 or len(out) != 3:
        raise ValueError(f"expected a (c, y, x) or (c, z, y, x) case with matching spacing, got data "
                         f"{data.shape}, spacing {out}")
    return data, label, out


def target_spacing_for(config: Configuration, spacing: Sequence[float]) -> list[float]:
    """The spacing (mm, (z, y, x)) a case of ``spacing`` (mm, (z, y, x)) is resampled to: the configuration's,
    with z untouched for 2D configurations."""
    sp = [float(s) for s in config.spacing]
    return [float(spacing[0]), *sp] if len(sp) == 2 else sp


def mark_unannotated(label: np.ndarray, ignore_value: int | None) -> np.ndarray:
    """``label`` (any shape) with the ``ignore`` label's voxels set to :data:`OUTSIDE_MASK`: like the background
    outside the nonzero mask, they are left out of the loss, the pseudo-Dice and patch centring. In place."""
    if ignore_value is not None:
        label[label == ignore_value] = OUTSIDE_MASK
    return label


def sample_class_locations(seg: np.ndarray, seed: int, n_max: int = MAX_CLASS_LOCATIONS) -> dict[str, list]:
    """Up to ``n_max`` voxel coordinates (spatial axes of ``seg``) per label value > 0, seeded."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for v in np.unique(seg):
        if v <= 0:
            continue
        coords = np.argwhere(seg == v)
        if len(coords) > n_max:
            coords = coords[np.sort(rng.choice(len(coords), n_max, replace=False))]
        out[str(int(v))] = coords.astype(int).tolist()
    return out


def preprocess_case(data: np.ndarray, label: np.ndarray | None, geometry: Geometry, config: Configuration,
                    seed: int = 0,
                    case_id: str | None = None,
                    file: str | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Preprocess one case for ``config`` (its spacing, normalization and resampling).

    ``data``: ``(c, *raw_spatial)`` float32; ``label``: ``(*raw_spatial)`` int, or None when predicting;
    ``geometry``: the raw image's (spacing including any override). Returns ``(data (c, Z, Y, X) float32,
    seg (1, Z, Y, X) int8 or None, props)`` with JSON-ready ``props``. Resampling that would make an absurdly
    large array (a wrong spacing) is refused before allocating, naming ``case_id`` and ``file``.
    """
    ndim = len(geometry.shape)
    if data.ndim != ndim + 1:
        raise ValueError(f"data {data.shape} does not match the geometry's {ndim}D shape {geometry.shape}")
    data, label, spacing = to_3d(data, label, geometry.spacing)
    if label is not None and label.shape != data.shape[1:]:
        raise ValueError(f"label {label.shape} and image {data.shape[1:]} shapes differ")
    shape_before = [int(s) for s in data.shape[1:]]

    mask = nonzero_mask(data)
    box = bbox_of(mask)
    data = crop(data, box)
    mask = crop(mask, box)
    seg = None
    if label is not None:
        seg = crop(label, box)
        seg = (np.rint(seg) if np.issubdtype(seg.dtype, np.floating) else seg).astype(np.int16)
        seg[(seg == 0) & ~mask] = OUTSIDE_MASK
    shape_after_crop = [int(s) for s in data.shape[1:]]

    data = normalize(data, config.normalization, mask)

    target = target_spacing_for(config, spacing)
    rs = config.resampling
    shape = new_shape(shape_after_crop, spacing, target)
    check_resampled_size(shape_after_crop, spacing, target, shape, data.shape[0], seg is not None,
                         case_id=case_id, file=file)
    threshold, axis_order = rs.anisotropy_threshold, rs.coarse_axis_order
    data = resample_image(data, spacing, target, shape=shape, order=rs.image_order,
                          anisotropy_threshold=threshold, axis_order=axis_order)
    locations: dict[str, list] = {}
    if seg is not None:
        seg = resample_label(seg, spacing, target, shape=shape,
                             order=rs.label_order,
                             anisotropy_threshold=threshold, axis_order=axis_order)
        if seg.min() < -128 or seg.max() > 127:
            raise ValueError(f"label values {int(seg.min())}..{int(seg.max())} do not fit int8")
        locations = sample_class_locations(seg, seed)
        seg = seg.astype(np.int8)[None]

    props: dict = {}
    if case_id is not None:
        props["case"] = case_id
    props.update({
        "ndim": ndim,
        "geometry": geometry.to_dict(),
        "crop_bbox": box,
        "shape_before_crop": shape_before,
        "shape_after_crop": shape_after_crop,
        "spacing": [float(s) for s in spacing],
        "target_spacing": [float(s) for s in target],
        "shape_after_resampling": [int(s) for s in data.shape[1:]],
        "class_locations": locations,
        "config": config.name,
    })
    return np.ascontiguousarray(data, dtype=np.float32), seg, props
