"""Target spacing of the full-resolution configuration (array axis order, mm)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from segpipe.planning import constants as C


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> tuple[list[float], str]:
    """Per-axis median spacing, with nnU-Net's anisotropy rule.

    If the coarsest axis' median spacing is more than ``ANISOTROPY_THRESHOLD`` x the largest other one and
    its median size (after crop) times the threshold is smaller than the smallest other median size, that axis
    uses the 10th percentile of its spacings instead (never finer than the other axes). Returns
    (spacing, reason).
    """
    sp = np.asarray(spacings, dtype=np.float64)
    sz = np.asarray(shapes, dtype=np.float64)
    target = np.percentile(sp, 50, axis=0)
    median_size = np.percentile(sz, 50, axis=0)
    why = f"per-axis median of the cases' spacings {_fmt(target)} mm"
    if len(target) < 3:
        return target.tolist(), why
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > C.ANISOTROPY_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = median_size[worst] * C.ANISOTROPY_THRESHOLD < min(median_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        value = float(np.percentile(sp[:, worst], C.ANISO_SPACING_PERCENTILE))
        floor = max(target[i] for i in others)
        if value < floor:
            value = max(floor, value) + C.ANISO_SPACING_EPSILON
        why += (f"; axis {worst} is anisotropic (median {target[worst]:.3g} mm > {C.ANISOTROPY_THRESHOLD:g}x the "
                f"others, and only {median_size[worst]:.3g} voxels deep), so it uses the "
                f"{C.ANISO_SPACING_PERCENTILE}th percentile of its spacings, {value:.3g} mm, to keep more slices")
        target[worst] = value
    return target.tolist(), why


def resampled_shapes(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                     target: Sequence[float]) -> npt.NDArray[np.int_]:
    """Each case's shape after resampling to ``target`` (voxels, rounded; one row per case, array axis order)."""
    sp, sz = np.asarray(spacings, float), np.asarray(shapes, float)
    out: npt.NDArray[np.int_] = np.round(sp / np.asarray(target, float) * sz).astype(int)
    return out


def _fmt(v: Iterable[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
