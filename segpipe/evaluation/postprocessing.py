"""Post-processing: keep only the largest connected component, of the whole foreground or per class.

It is applied only where it improved the cross-validation Dice (decided by :func:`choose_from_counts` from
per-case voxel counts, :class:`CaseCounts`, so that cases can be streamed one at a time); the decision is stored
as JSON ``{"foreground": bool, "classes": [names]}``. Label maps are integer arrays, e.g. ``(z, y, x)``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import generate_binary_structure
from scipy.ndimage import label as cc_label

from segpipe.dataset.model import LabelValue, output_classes
from segpipe.dataset.regions import class_mask
from segpipe.evaluation.metrics import Counts, class_counts, record_from_counts, unannotated
from segpipe.evaluation.summary import mean_dice

MIN_IMPROVEMENT = 1e-4  # a step is kept only if mean Dice improves by more than this


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (full connectivity) of a boolean mask; empty stays empty."""
    if not mask.any():
        return mask
    comps, n = cc_label(mask, structure=generate_binary_structure(mask.ndim, mask.ndim))
    if n <= 1:
        return mask
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    return comps == int(np.argmax(sizes))


def keep_largest_foreground(seg: np.ndarray) -> np.ndarray:
    out = seg.copy()
    out[(seg > 0) & ~largest_component(seg > 0)] = 0
    return out


def keep_largest_of_class(seg: np.ndarray, value: LabelValue) -> np.ndarray:
    """``seg`` with the voxels of class (or region) ``value`` outside its largest component set to background."""
    out = seg.copy()
    m = class_mask(seg, value)
    out[m & ~largest_component(m)] = 0
    return out


def apply_postprocessing(seg: np.ndarray, choice: dict, labels: Mapping[str, Any]) -> np.ndarray:
    """Apply a stored post-processing choice to a label map."""
    if choice.get("foreground"):
        seg = keep_largest_foreground(seg)
    for name in choice.get("classes", []):
        seg = keep_largest_of_class(seg, output_classes(labels)[name])
    return seg


@dataclass(frozen=True)
class CaseCounts:
    """Per-class (tp, fp, fn) voxel counts of one case under each post-processing step that
    :func:`choose_from_counts` may choose: everything a choice needs, without the arrays.

    Keeping the largest component of class ``v`` changes only the voxels of ``v``, so the counts of each class
    depend only on whether the foreground step and that class' own step are applied: four variants per class.
    ``foreground`` and ``foreground_then_class`` are None when the foreground step is not tried (one foreground
    class)."""

    plain: dict[str, Counts]
    largest_of_class: dict[str, Counts]
    foreground: dict[str, Counts] | None = None
    foreground_then_class: dict[str, Counts] | None = None

    def after(self, choice: dict) -> dict[str, Counts]:
        """The counts of every class once ``choice`` (``{"foreground": bool, "classes": [names]}``) is applied."""
        fg = bool(choice.get("foreground"))
        base = self.foreground if fg else self.plain
        largest = self.foreground_then_class if fg else self.largest_of_class
        if base is None or largest is None:
            raise ValueError("the foreground step was not counted for this case")
        return {name: largest[name] if name in choice.get("classes", []) else c for name, c in base.items()}

    def foreground_counts(self, then_class: bool = False) -> dict[str, Counts]:
        """``foreground`` (or ``foreground_then_class``); an error when the foreground step was not counted."""
        counts = self.foreground_then_class if then_class else self.foreground
        if counts is None:
            raise ValueError("the foreground step was not counted for this case")
        return counts


def _largest_counts(seg: np.ndarray, ref: np.ndarray, labels: Mapping[str, Any]) -> dict[str, Counts]:
    """(tp, fp, fn) of each class after keeping only its largest component (of the whole prediction), counted
    over the annotated voxels."""
    out = {}
    ignored = unannotated(ref, labels)
    for name, v in output_classes(labels).items():
        if v == 0:
            continue
        p, r = largest_component(class_mask(seg, v)), class_mask(ref, v)
        if ignored is not None:
            p &= ~ignored
        tp = int(np.count_nonzero(p & r))
        out[name] = (tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)
    return out


def case_counts(pred: np.ndarray, ref: np.ndarray, labels: Mapping[str, Any]) -> CaseCounts:
    """The :class:`CaseCounts` of one case: ``pred`` and ``ref`` are label maps of the same shape (e.g.
    ``(z, y, x)``); the counts are voxels."""
    multi = len([v for v in output_classes(labels).values() if v != 0]) > 1
    fg = keep_largest_foreground(pred) if multi else None
    return CaseCounts(plain=class_counts(pred, ref, labels), largest_of_class=_largest_counts(pred, ref, labels),
                      foreground=class_counts(fg, ref, labels) if fg is not None else None,
                      foreground_then_class=_largest_counts(fg, ref, labels) if fg is not None else None)


def _mean_dice(counts: list[dict[str, Counts]], labels: Mapping[str, Any]) -> dict[str, float]:
    return mean_dice({str(i): record_from_counts(c) for i, c in enumerate(counts)}, labels)


def choose_from_counts(cases: Iterable[CaseCounts], labels: Mapping[str, Any]) -> dict:
    """Decide which post-processing helps from the :class:`CaseCounts` of every cross-validation case.

    First the whole foreground (only with more than one foreground class): kept if the mean over classes of
    the mean Dice improves by more than ``MIN_IMPROVEMENT``. Then, on top of that, each class: kept if that
    class' mean Dice improves. Returns the choice plus the mean Dice per class before and after."""
    cases = list(cases)
    base = _mean_dice([c.plain for c in cases], labels)
    mean = lambda d: float(np.nanmean(list(d.values()))) if d else float("nan")  # noqa: E731
    choice: dict = {"foreground": False, "classes": []}
    current = base
    if len([v for v in output_classes(labels).values() if v != 0]) > 1:
        fg = _mean_dice([c.foreground_counts() for c in cases], labels)
        if mean(fg) > mean(base) + MIN_IMPROVEMENT:
            choice["foreground"] = True
            current = fg
    largest = _mean_dice([c.foreground_counts(then_class=True) if choice["foreground"] else c.largest_of_class
                          for c in cases], labels)
    current = dict(current)
    for name, v in output_classes(labels).items():
        if v == 0:
            continue
        if largest[name] > current[name] + MIN_IMPROVEMENT:
            choice["classes"].append(name)
            current[name] = largest[name]
    return {**choice, "dice_before": base, "dice_after": current}


def choose_postprocessing(pairs: Iterable[tuple[np.ndarray, np.ndarray]], labels: Mapping[str, Any]) -> dict:
    """Decide, from (prediction, reference) pairs of cross-validation, which post-processing helps (see
    :func:`choose_from_counts`). ``pairs`` may be a generator: one pair at a time is held."""
    return choose_from_counts((case_counts(p, r, labels) for p, r in pairs), labels)
