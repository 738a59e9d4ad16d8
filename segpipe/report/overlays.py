"""Overlays of cross-validation cases: the image with the reference and the predicted contours.

Arrays are in array axis order (:mod:`segpipe.axes`): images channels first ``(c, z, y, x)`` / ``(c, y, x)``,
label maps ``(z, y, x)`` / ``(y, x)``; spacing in mm in the same order. A 3D case is shown as one slice across
its through-plane axis (the axis of coarsest spacing; axis 0, ``z``, when all are equal), the slice holding
the most reference foreground; a 2D case is shown whole. Slices are drawn as stored in the array (rows: the
first remaining axis, columns: the second), not reoriented to a radiological view, with pixels shaped by the
spacing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segpipe.report.plots import axis_names, new_figure, to_png

REFERENCE_COLOUR = "#00b7ff"  # blue and orange: told apart with either kind of red-green colour blindness
PREDICTION_COLOUR = "#ff8c00"
CLASS_LINESTYLES: tuple[Any, ...] = ("solid", "dashed", "dotted", "dashdot")


@dataclass(frozen=True)
class RankedCase:
    """A cross-validation case and its mean Dice over the foreground classes (classes with a Dice only)."""

    case: str
    fold: str
    mean_dice: float
    role: str = ""


def mean_foreground_dice(per_class: Mapping[str, Mapping[str, Any]]) -> float | None:
    """Mean Dice over the classes of one case's metrics (``{class: {"dice": ...}}``; classes whose Dice is
    undefined, absent from reference and prediction, are left out); None when no class has a Dice."""
    values = [float(m["dice"]) for m in per_class.values()
              if isinstance(m, Mapping) and isinstance(m.get("dice"), (int, float)) and math.isfinite(m["dice"])]
    return float(np.mean(values)) if values else None


def pick_cases(scores: Sequence[RankedCase]) -> list[RankedCase]:
    """The best, median and worst case by mean Dice (ties by case id); fewer when there are fewer cases."""
    ranked = sorted(scores, key=lambda r: (-r.mean_dice, r.case))
    if not ranked:
        return []
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    out: list[RankedCase] = []
    for role, r in picks:
        if all(o.case != r.case for o in out):
            out.append(RankedCase(r.case, r.fold, r.mean_dice, role))
    return out


def through_plane_axis(spacing: Sequence[float]) -> int:
    """The axis a 3D volume is sliced across: the one of coarsest spacing (the first of equals: axis 0)."""
    return int(np.argmax(np.asarray(spacing, float)))


def best_slice(reference: np.ndarray, prediction: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most reference foreground (label > 0); the prediction's when
    the reference is empty; the middle slice when both are."""
    for lab in (reference, prediction):
        other = tuple(i for i in range(lab.ndim) if i != axis)
        counts = np.count_nonzero(lab > 0, axis=other)
        if counts.max(initial=0) > 0:
            return int(np.argmax(counts))
    return reference.shape[axis] // 2


def _window(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, (0.5, 99.5))
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def overlay_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                classes: Mapping[str, int | tuple[int, ...]], title: str) -> tuple[bytes, str]:
    """A PNG of the first image channel with reference and predicted contours of each class, and a sentence
    saying which slice it shows.

    ``image``: ``(c, z, y, x)`` or ``(c, y, x)``; ``reference``/``prediction``: label maps of the same spatial
    shape; ``spacing``: mm, array order; ``classes``: foreground class name -> label value.
    """
    ndim = reference.ndim
    img = image[0].astype(np.float32, copy=False)
    if ndim == 3:
        axis = through_plane_axis(spacing)
        k = best_slice(reference, prediction, axis)
        img, ref, pred = (np.take(a, k, axis=axis) for a in (img, reference, prediction))
        rest = [i for i in range(3) if i != axis]
        names = axis_names(3)
        where = (f"slice {k} of {reference.shape[axis]} across axis {names[axis]} (the slice with the most "
                 f"reference foreground); rows: axis {names[rest[0]]}, columns: axis {names[rest[1]]}")
        pixel = (float(spacing[rest[0]]), float(spacing[rest[1]]))
    else:
        ref, pred = reference, prediction
        where = "the whole image; rows: axis y, columns: axis x"
        pixel = (float(spacing[0]), float(spacing[1]))
    rows, cols = img.shape
    aspect = pixel[0] / pixel[1] if pixel[1] > 0 else 1.0
    # about 420 pixels on the long side, whatever the slice size
    height_in, width_in = rows * aspect, cols
    scale = 5.6 / max(height_in, width_in)
    fig = new_figure(max(3.2, width_in * scale + 0.4), max(2.6, height_in * scale + 0.8))
    ax = fig.add_subplot(1, 1, 1)
    lo, hi = _window(img)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="bilinear" if max(rows, cols) < 200
              else "antialiased")
    from matplotlib.lines import Line2D

    handles = []
    for i, (name, value) in enumerate(classes.items()):
        style = CLASS_LINESTYLES[i % len(CLASS_LINESTYLES)]
        for lab, colour, who in ((ref, REFERENCE_COLOUR, "reference"), (pred, PREDICTION_COLOUR, "prediction")):
            mask = np.isin(lab, value if isinstance(value, tuple) else (value,)).astype(np.float32)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.6, linestyles=style)
            handles.append(Line2D([], [], color=colour, linestyle=style, label=f"{who}: {name}"))
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.75)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return to_png(fig), where

