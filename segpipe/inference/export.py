"""Export of predicted probabilities into the raw image's geometry.

Preprocessing cropped a case to its nonzero bounding box and resampled it to the target spacing; export
undoes both: probabilities are resampled back to the cropped shape (linear interpolation, the coarse axis of
anisotropic cases with nearest neighbour, as in preprocessing), renormalised, and placed into an array of
the raw shape whose outside is background. The label map is their argmax, written with the raw geometry.

Every label map segpipe writes (final validation, ``segpipe predict``) is written by :func:`write_prediction`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segpipe.io.atomic import atomic_save_npz
from segpipe.io.images import Geometry, file_ending, write_image
from segpipe.preprocessing.resampling import resample_image


def probabilities_to_original(probs: torch.Tensor | np.ndarray, props: dict) -> np.ndarray:
    """Probabilities ``(n_classes, Z, Y, X)`` at the target spacing -> ``(n_classes, *raw_shape)`` float32.

    ``props`` is the preprocessing record of the case (crop box, shapes, spacings, raw geometry). For 2D
    data (``props['ndim'] == 2``) the singleton Z axis is removed.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be (n_classes, Z, Y, X), got shape {probs.shape}")
    expected = [int(s) for s in props["shape_after_resampling"]]
    if list(probs.shape[1:]) != expected:
        raise ValueError(f"probabilities of spatial shape {list(probs.shape[1:])} do not match "
                         f"shape_after_resampling {expected} of case {props.get('case')}")
    crop_shape = [int(s) for s in props["shape_after_crop"]]
    out = resample_image(probs, props["target_spacing"], props["spacing"], shape=crop_shape, order=1)
    total = out.sum(axis=0, keepdims=True)
    np.maximum(total, np.float32(1e-8), out=total)
    out /= total

    full_shape = tuple(int(s) for s in props["shape_before_crop"])
    full = np.zeros((probs.shape[0],) + full_shape, dtype=np.float32)
    full[0] = 1.0
    box = tuple(slice(int(a), int(b)) for a, b in props["crop_bbox"])
    full[(slice(None),) + box] = out
    if int(props.get("ndim", 3)) == 2:
        full = full[:, 0]
    raw_shape = tuple(int(s) for s in props["geometry"]["shape"])
    if tuple(full.shape[1:]) != raw_shape:
        raise ValueError(f"exported shape {full.shape[1:]} differs from the raw image's {raw_shape} "
                         f"(case {props.get('case')})")
    return full


def probabilities_path(out_path: str | Path) -> Path:
    """``<out_path without its image ending>.npz``: where the probabilities of ``out_path`` go."""
    out_path = Path(out_path)
    end = file_ending(out_path) or out_path.suffix
    name = out_path.name[: len(out_path.name) - len(end)] if end else out_path.name
    return out_path.with_name(name + ".npz")


def label_map(probs: np.ndarray) -> np.ndarray:
    """The label map (argmax over classes; uint8, uint16 beyond 256 classes) of probabilities
    ``(n_classes, *spatial)``: ``(*spatial)``, e.g. ``(z, y, x)``."""
    return np.argmax(probs, axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def write_prediction(probs: np.ndarray, geometry: Geometry | dict, out_path: str | Path,
                     save_probabilities: bool = False, postprocess: dict | None = None,
                     labels: dict[str, int] | None = None) -> np.ndarray:
    """Write the label map of probabilities already in the raw geometry (``(n_classes, *raw_shape)``, e.g.
    ``(n_classes, z, y, x)``) to ``out_path`` (atomically, format by ending, with ``geometry``: spacing in mm,
    origin, direction), post-processed by a stored ``postprocess`` choice (needs ``labels``) when given, and
    the probabilities (float16, key ``probabilities``) in ``<out_path without ending>.npz`` when
    ``save_probabilities``. Returns the label map written. Every label-map export goes through here."""
    seg = label_map(probs)
    if postprocess:
        from segpipe.evaluation.postprocessing import apply_postprocessing

        seg = apply_postprocessing(seg, postprocess, labels or {})
    geo = geometry if isinstance(geometry, Geometry) else Geometry.from_dict(geometry)
    write_image(seg, geo, out_path)
    if save_probabilities:
        atomic_save_npz(probabilities_path(out_path), probabilities=probs.astype(np.float16))
    return seg


def export_label_map(probs: torch.Tensor | np.ndarray, props: dict, out_path: str | Path | None = None,
                     save_probabilities: bool = False) -> np.ndarray:
    """The label map (argmax, uint8, raw shape) of ``probs`` in the raw geometry; written to ``out_path``
    (atomically, format by ending) when given, with the probabilities (float16, key ``probabilities``,
    raw geometry) in ``<out_path without ending>.npz`` when ``save_probabilities``."""
    full = probabilities_to_original(probs, props)
    if out_path is None:
        return label_map(full)
    return write_prediction(full, props["geometry"], out_path, save_probabilities)
