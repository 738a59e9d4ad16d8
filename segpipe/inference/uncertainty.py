"""Voxel-wise uncertainty of a prediction (``segpipe predict --uncertainty``): predictive entropy, mutual
information, and one score per case.

The ensemble members are everything a prediction averages: each mirroring of each fold (and of each
configuration, for an ensemble of configurations). With ``p_m`` the class probabilities of member ``m`` at a
voxel:

* **entropy** (predictive, total): ``H[E p] = -sum_c p̄_c log p̄_c`` of the mean prediction ``p̄ = E_m p_m``, the
  probabilities the label map is the argmax of;
* **expected entropy** (aleatoric): ``E_m H[p_m]``;
* **mutual information** (epistemic, the members' disagreement): ``MI = H[E p] - E H[p] >= 0`` (Jensen: entropy is
  concave), 0 when every member gives the same probabilities, and equal to ``H[E p]`` when every member is sure
  (one-hot) but they disagree.

Region-based models (one sigmoid per region, dataset.json's ``regions_class_order``) have no categorical
distribution over classes: their entropy is the sum over regions of the binary entropies
``-p log p - (1 - p) log(1 - p)`` (each region is an independent yes/no), and the same decomposition holds
region by region. Units are nats; the largest possible entropy (:func:`max_entropy`) is ``log(n_classes)``, or
``n_regions * log 2``.

Memory: the members' probabilities are never kept. The sliding window
(:func:`segpipe.inference.sliding_window.predict_sliding_window`, ``entropy_out``) adds each member's entropy,
weighted like its probabilities, into one float32 volume at the configuration's spacing, next to the summed
probabilities. Export (:func:`export_uncertainty`) computes ``H[E p]`` in the raw geometry from the
probabilities resampled back class by class and slab by slab with the plan's orders (the same averaged
probabilities the label map is made from, so an ensemble of configurations is handled exactly), resamples the
expected entropy with the same orders, and writes ``<case>_entropy<ending>`` and
``<case>_mutual_information<ending>`` (float32, the label map's geometry; 0 outside the crop box, where the
prediction is background for sure; ``.tif`` for PNG, BMP and JPEG label maps, which hold no float pixels).
With linear (or nearest) resampling the resampled values are convex combinations, so ``MI >= 0`` survives
resampling; cubic orders can overshoot, and MI is clamped at 0.

The per-case score (:func:`case_scores`) is the mean entropy over the case's **region of interest**: the
predicted foreground dilated by :data:`DILATION_VOXELS` voxels, together with every voxel whose entropy is at
least :data:`UNSURE_FRACTION` of the maximum. The mean over the whole image is reported too, but it mostly
measures how much of the image is near a boundary (a larger field of view or a smaller structure lowers it);
restricting to the structure and its rim makes cases of different sizes comparable, and adding the very unsure
voxels keeps a case in which the model predicts nothing, or something far from the structure, from scoring 0
when it is in fact unsure. A case with no foreground and no unsure voxel scores 0. All case scores of one
prediction go to ``uncertainty.json`` in the output folder (:func:`write_summary`).
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segpipe.inference.export import Parts, _Case
from segpipe.io.images import Geometry, GeometryDict, file_ending, write_image
from segpipe.io.jsonio import write_json
from segpipe.planning.plans import Resampling

log = logging.getLogger(__name__)

SUMMARY_NAME = "uncertainty.json"  # in the output folder of a prediction
SUMMARY_KIND = "uncertainty"
ENTROPY_SUFFIX = "_entropy"
MI_SUFFIX = "_mutual_information"
# 2D formats that hold no float32 pixels: their maps are written as float32 TIFF (the same pixel grid)
FLOAT_ENDING = {".png": ".tif", ".bmp": ".tif", ".jpg": ".tif", ".jpeg": ".tif"}
DILATION_VOXELS = 2     # the predicted foreground's rim included in the region of interest (raw voxels)
UNSURE_FRACTION = 0.5   # voxels with entropy >= this fraction of the maximum are in the region of interest


# --- the math ---------------------------------------------------------------------------------------------------

def class_entropy_term(p: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """One class' (or region's) share of the entropy, elementwise (nats, float32, same shape as ``p``):
    ``-p log p`` (softmax classes), or the binary entropy ``-p log p - (1 - p) log(1 - p)`` with ``binary``
    (sigmoid regions). ``p`` is clamped to ``[0, 1]`` first (resampling with cubic orders can overshoot it);
    ``0 log 0 = 0``."""
    q = p.float().clamp(0.0, 1.0)
    out = torch.special.xlogy(q, q).neg_()
    if binary:
        r = 1.0 - q
        out.sub_(torch.special.xlogy(r, r))
    return out


def entropy(probs: torch.Tensor, dim: int = 0, binary: bool = False) -> torch.Tensor:
    """Entropy (nats, float32) of probabilities over ``dim`` (e.g. ``(n_classes, Z, Y, X)`` with ``dim=0`` ->
    ``(Z, Y, X)``; a batch ``(B, n_classes, *patch)`` with ``dim=1`` -> ``(B, *patch)``): categorical over the
    classes, or with ``binary`` (region-based models) the sum of each region's binary entropy. Summed class by
    class: beyond the result, one class-sized temporary at a time."""
    out: torch.Tensor | None = None
    for c in range(probs.shape[dim]):
        term = class_entropy_term(probs.select(dim, c), binary)
        out = term if out is None else out.add_(term)
    if out is None:
        raise ValueError(f"no classes along dim {dim} of probabilities of shape {tuple(probs.shape)}")
    return out


def max_entropy(n_outputs: int, binary: bool = False) -> float:
    """The largest entropy a voxel can have (nats): ``log(n_classes)``, or ``n_regions * log 2``."""
    return n_outputs * math.log(2.0) if binary else math.log(max(1, n_outputs))


def decompose(members: torch.Tensor, binary: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H[E p], E H[p], MI)`` of an ensemble held in memory, ``members`` ``(n_members, n_classes, *spatial)``
    -> three ``(*spatial)`` float32 arrays (members weighted equally; MI clamped at 0 against rounding). The
    reference for the streamed computation of :func:`predict_sliding_window`'s ``entropy_out`` and
    :func:`export_uncertainty`, for small arrays and tests: prediction never holds all members."""
    if members.ndim < 2 or members.shape[0] < 1:
        raise ValueError(f"members must be (n_members, n_classes, *spatial), got {tuple(members.shape)}")
    total = entropy(members.float().mean(dim=0), dim=0, binary=binary)
    expected = entropy(members, dim=1, binary=binary).mean(dim=0)
    return total, expected, (total - expected).clamp_(min=0.0)


# --- files ------------------------------------------------------------------------------------------------------

def uncertainty_paths(out_path: str | Path) -> tuple[Path, Path]:
    """``(<case>_entropy<ending>, <case>_mutual_information<ending>)`` next to the label map ``out_path``; a
    label map in a format without float pixels (PNG, BMP, JPEG) gets ``.tif`` maps (:data:`FLOAT_ENDING`)."""
    out_path = Path(out_path)
    end = file_ending(out_path) or out_path.suffix
    stem = out_path.name[: len(out_path.name) - len(end)] if end else out_path.name
    end_out = FLOAT_ENDING.get(end.lower(), end)
    return (out_path.with_name(f"{stem}{ENTROPY_SUFFIX}{end_out}"),
            out_path.with_name(f"{stem}{MI_SUFFIX}{end_out}"))


def _as_tensor(volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``volume`` without a copy (a read-only memory map included; it is never written)."""
    if isinstance(volume, torch.Tensor):
        return volume.detach().cpu()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(volume))


def _total_entropy(case: _Case) -> torch.Tensor:
    """``H[E p]`` at the cropped raw shape ``(z, y, x)`` from the parts' probabilities, resampled back and
    averaged class by class and slab by slab exactly as the label map's export does (float32)."""
    total = torch.zeros(case.crop_shape, dtype=torch.float32)
    for c in range(case.n_classes):
        for s, e, p in case.class_slabs(c):
            total[s:e] += class_entropy_term(p, case.regions)
    return total


def _expected_entropy(case: _Case, expected: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """``E H[p]`` at the cropped raw shape: each part's expected entropy (at its configuration's spacing)
    resampled back with that part's orders, slab by slab, averaged over the parts (float32)."""
    if len(expected) != len(case.parts):
        raise ValueError(f"{len(expected)} expected-entropy volumes for {len(case.parts)} sets of probabilities")
    out = torch.zeros(case.crop_shape, dtype=torch.float32)
    for volume, resampler in zip(expected, case.resamplers):
        t = _as_tensor(volume)
        for s in range(0, case.crop_shape[0], case.rows):
            e = min(s + case.rows, case.crop_shape[0])
            out[s:e] += resampler.slab(t, s, e)
    if len(expected) > 1:
        out /= len(expected)
    return out


def _uncrop(case: _Case, crop: torch.Tensor) -> np.ndarray:
    """``crop`` pasted into the raw shape (0 outside the crop box): ``(z, y, x)``, ``(y, x)`` for 2D data."""
    full = np.zeros(case.full_shape, dtype=np.float32)
    full[tuple(slice(a, b) for a, b in case.box)] = crop.numpy()
    return full[0] if case.ndim == 2 else full


@dataclass(frozen=True)
class CaseUncertainty:
    """One case's uncertainty in its raw geometry: the ``entropy`` and ``mutual_information`` maps (float32,
    nats, the label map's shape; 0 outside the crop box) and ``scores`` (:func:`case_scores`; ``score`` is the
    case's score, as ``uncertainty.json`` has it)."""

    entropy: np.ndarray
    mutual_information: np.ndarray
    scores: dict[str, Any]

    @property
    def score(self) -> float:
        return float(self.scores["score"])


def case_uncertainty(parts: Parts, expected: Sequence[torch.Tensor | np.ndarray], label_map: np.ndarray,
                     resampling: Sequence[Resampling] | Resampling | None = None, regions: bool = False
                     ) -> CaseUncertainty:
    """The entropy and mutual-information maps of one case in its raw geometry, and its scores.

    ``parts``: ``(probabilities (n_classes, Z, Y, X), props)`` per configuration, as given to
    :func:`segpipe.inference.export.export_prediction`; ``expected``: each part's expected entropy ``(Z, Y, X)``
    at the same grid (``predict_sliding_window``'s ``entropy_out``); ``label_map``: the case's label map (raw
    shape), whose foreground defines the region of interest; ``resampling``: the parts' plan entries;
    ``regions``: region (sigmoid) probabilities. Peak memory beyond the inputs: three float32 volumes of the
    cropped shape and two of the raw shape."""
    case = _Case(parts, resampling, regions=regions)
    total = _total_entropy(case)
    mi = total - _expected_entropy(case, expected)
    mi.clamp_(min=0.0)  # Jensen makes it >= 0 up to rounding (and cubic overshoot)
    entropy_map = _uncrop(case, total)
    del total
    mi_map = _uncrop(case, mi)
    del mi
    return CaseUncertainty(entropy_map, mi_map,
                           case_scores(entropy_map, mi_map, label_map, max_entropy(case.n_classes, regions)))


def export_uncertainty(parts: Parts, expected: Sequence[torch.Tensor | np.ndarray], out_path: str | Path,
                       geometry: Geometry | GeometryDict | Mapping[str, Any], label_map: np.ndarray,
                       resampling: Sequence[Resampling] | Resampling | None = None, regions: bool = False
                       ) -> dict[str, Any]:
    """Write the entropy and mutual-information maps of one case (:func:`case_uncertainty`) next to its label
    map ``out_path`` (:func:`uncertainty_paths`; float32, atomically, with ``geometry``) and return its scores
    (:func:`case_scores`)."""
    result = case_uncertainty(parts, expected, label_map, resampling, regions)
    geo = geometry if isinstance(geometry, Geometry) else Geometry.from_dict(geometry)
    entropy_path, mi_path = uncertainty_paths(out_path)
    write_image(result.entropy, geo, entropy_path)
    write_image(result.mutual_information, geo, mi_path)
    return result.scores


# --- scores -----------------------------------------------------------------------------------------------------

def region_of_interest(entropy_map: np.ndarray, label_map: np.ndarray, h_max: float) -> np.ndarray:
    """Where a case's score is taken (bool, the raw shape): the predicted foreground (``label_map != 0``) dilated
    by :data:`DILATION_VOXELS` voxels (face neighbours, per step), and every voxel whose entropy is at least
    :data:`UNSURE_FRACTION` of ``h_max``."""
    if entropy_map.shape != label_map.shape:
        raise ValueError(f"entropy map {entropy_map.shape} and label map {label_map.shape} differ in shape")
    foreground = np.asarray(label_map) != 0
    if foreground.any() and DILATION_VOXELS > 0:
        foreground = ndimage.binary_dilation(foreground, iterations=DILATION_VOXELS)
    return foreground | (entropy_map >= UNSURE_FRACTION * h_max)


def _mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    chosen = values if mask is None else values[mask]
    return float(chosen.mean(dtype=np.float64)) if chosen.size else 0.0


def case_scores(entropy_map: np.ndarray, mi_map: np.ndarray, label_map: np.ndarray, h_max: float
                ) -> dict[str, Any]:
    """One case's uncertainty (nats) from its entropy and MI maps and label map (all the raw shape):
    ``score`` (the mean entropy over :func:`region_of_interest`; 0 when the region is empty), the mean MI over
    the same region, the region's and the predicted foreground's sizes (voxels), and both means over the whole
    image."""
    roi = region_of_interest(entropy_map, label_map, h_max)
    score = _mean(entropy_map, roi)
    return {"score": score, "mean_entropy_region": score,
            "mean_mutual_information_region": _mean(mi_map, roi), "region_voxels": int(roi.sum()),
            "foreground_voxels": int(np.count_nonzero(label_map)),
            "mean_entropy_image": _mean(entropy_map), "mean_mutual_information_image": _mean(mi_map)}


def write_summary(output_dir: str | Path, cases: Mapping[str, Mapping[str, Any]], members: Mapping[str, Any],
                  h_max: float) -> Path:
    """Write ``uncertainty.json`` (kind ``uncertainty``) into ``output_dir``: how the score is defined, the
    ensemble members (``members``: per configuration, its folds and mirrorings), the largest possible entropy
    ``h_max`` (nats), and ``cases`` (case id -> :func:`case_scores`), sorted by case id. Returns its path."""
    path = Path(output_dir) / SUMMARY_NAME
    doc = {"units": "nats", "max_entropy": h_max,
           "score": (f"mean predictive entropy H[E p] over the predicted foreground dilated by {DILATION_VOXELS} "
                     f"voxels and every voxel with entropy >= {UNSURE_FRACTION} x max_entropy"),
           "members": dict(members), "n_cases": len(cases), "cases": {k: dict(cases[k]) for k in sorted(cases)}}
    write_json(path, doc, kind=SUMMARY_KIND)
    log.info("uncertainty of %d case(s) -> %s", len(cases), path)
    return path
