"""Post-processing: keep only the largest connected component, of the whole foreground or per class.

It is applied only where it improved the cross-validation Dice (decided by :func:`choose_postprocessing`);
the decision is stored as JSON ``{"foreground": bool, "classes": [names]}``.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import generate_binary_structure, label as cc_label

from segpipe.evaluation.metrics import mean_dice_per_class

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


def keep_largest_of_class(seg: np.ndarray, value: int) -> np.ndarray:
    out = seg.copy()
    m = seg == value
    out[m & ~largest_component(m)] = 0
    return out


def apply_postprocessing(seg: np.ndarray, choice: dict, labels: dict[str, int]) -> np.ndarray:
    """Apply a stored post-processing choice to a label map."""
    if choice.get("foreground"):
        seg = keep_largest_foreground(seg)
    for name in choice.get("classes", []):
        seg = keep_largest_of_class(seg, labels[name])
    return seg


def choose_postprocessing(pairs: list[tuple[np.ndarray, np.ndarray]], labels: dict[str, int]) -> dict:
    """Decide, from (prediction, reference) pairs of cross-validation, which post-processing helps.

    First the whole foreground: kept if the mean foreground Dice improves. Then, on top of that, each class:
    kept if that class' Dice improves. Returns the choice plus the Dice before and after.
    """
    base = mean_dice_per_class(pairs, labels)
    mean = lambda d: float(np.nanmean(list(d.values()))) if d else float("nan")  # noqa: E731
    choice: dict = {"foreground": False, "classes": []}
    fg_pairs = [(keep_largest_foreground(p), r) for p, r in pairs]
    fg = mean_dice_per_class(fg_pairs, labels)
    current_pairs, current = pairs, base
    if len([v for v in labels.values() if v > 0]) > 1 and mean(fg) > mean(base) + MIN_IMPROVEMENT:
        choice["foreground"] = True
        current_pairs, current = fg_pairs, fg
    for name, v in labels.items():
        if v == 0:
            continue
        trial_pairs = [(keep_largest_of_class(p, v), r) for p, r in current_pairs]
        trial = mean_dice_per_class(trial_pairs, labels)
        if trial[name] > current[name] + MIN_IMPROVEMENT:
            choice["classes"].append(name)
            current_pairs, current = trial_pairs, trial
    return {**choice, "dice_before": base, "dice_after": current}
