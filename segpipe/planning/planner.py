"""Plans for a dataset: 2d, 3d_fullres and (only when needed) 3d_lowres, each with a reason per choice."""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from segpipe.dataset.model import DatasetSpec
from segpipe.errors import fail
from segpipe.planning import constants as C
from segpipe.planning.configuration import plan_configuration
from segpipe.planning.normalization import plan_normalization
from segpipe.planning.presets import PRESETS, Preset
from segpipe.planning.spacing import resampled_shapes, target_spacing

PLANNER_NAME = "default"


class _Overrides(TypedDict):
    """:func:`plan_configuration`'s user overrides for one configuration, and the network's input channels."""

    patch_override: Sequence[int] | None
    batch_override: int | None
    in_channels: int


def _resampling(spacing: Sequence[float]) -> dict[str, Any]:
    return {"image_order": C.IMAGE_RESAMPLING_ORDER, "label_order": C.LABEL_RESAMPLING_ORDER,
            "label_mode": "one-hot", "anisotropy_threshold": C.ANISOTROPY_THRESHOLD,
            "coarse_axis_order": C.COARSE_AXIS_RESAMPLING_ORDER,
            "why": (f"images with order {C.IMAGE_RESAMPLING_ORDER} splines, labels order "
                    f"{C.LABEL_RESAMPLING_ORDER} on one-hot maps; where a case's coarsest axis is > "
                    f"{C.ANISOTROPY_THRESHOLD:g}x the others it is resampled separately with order "
                    f"{C.COARSE_AXIS_RESAMPLING_ORDER}")}


def plan_dataset(fingerprint: Mapping[str, Any], spec: DatasetSpec, memory_gb: float = C.DEFAULT_MEMORY_GB,
                 spacing: Sequence[float] | None = None, patch_size: Sequence[int] | None = None,
                 batch_size: int | None = None, override_config: str | None = None,
                 network: str = "plain", preset: Preset = PRESETS["default"]) -> dict[str, Any]:
    """Compute plans.json content from a fingerprint. Overrides apply to ``override_config`` (default: the
    main configuration, 3d_fullres for 3D data and 2d for 2D data); ``spacing`` applies to the full-resolution
    spacing of all configurations."""
    ndim = fingerprint["ndim"]
    n_cases = fingerprint["n_cases"]
    n_classes = spec.n_outputs  # network outputs: classes, or regions (sigmoid)
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    main = "3d_fullres" if ndim == 3 else "2d"
    override_config = override_config or main
    for name, val in (("spacing", spacing), ("patch_size", patch_size)):
        if val is not None and len(val) != (ndim if name == "spacing" else (2 if override_config == "2d" else 3)):
            raise fail(f"--{name.replace('_', '-')} needs one value per axis, got {list(val)}",
                       "give values in array axis order (z y x for 3D, y x for 2D)")
    if spacing is not None:
        full_spacing, sp_why = [float(s) for s in spacing], f"set by the user ({list(spacing)} mm)"
    else:
        full_spacing, sp_why = target_spacing(spacings, shapes)
    new_shapes = resampled_shapes(spacings, shapes, full_spacing)
    median_shape = np.median(new_shapes, axis=0)
    n_vox = float(np.prod(median_shape, dtype=np.float64) * n_cases)

    def ov(cfg: str) -> _Overrides:
        return {"patch_override": patch_size if override_config == cfg else None,
                "batch_override": batch_size if override_config == cfg else None, "in_channels": spec.n_channels}

    norm, norm_why = plan_normalization(spec.channels, fingerprint)
    configs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    if ndim == 3:
        full = plan_configuration(full_spacing, median_shape.tolist(), n_vox, n_classes, memory_gb,
                                  network=network, preset=preset, **ov("3d_fullres"))
        full["why"]["spacing"] = sp_why
        lowres, lowres_note = _plan_lowres(full, median_shape, n_cases, n_classes, memory_gb, network,
                                           ov("3d_lowres"), preset)
        notes.append(lowres_note)
        full["batch_dice"] = lowres is not None
        configs["3d_fullres"] = full
        if lowres is not None:
            lowres["batch_dice"] = False
            configs["3d_lowres"] = lowres
        two = plan_configuration(full_spacing[1:], median_shape[1:].tolist(), n_vox, n_classes, memory_gb,
                                 network=network, preset=preset, **ov("2d"))
        two["why"]["spacing"] = f"the in-plane axes of 3d_fullres, {full_spacing[1:]} mm"
    else:
        two = plan_configuration(full_spacing, median_shape.tolist(), n_vox, n_classes, memory_gb,
                                 network=network, preset=preset, **ov("2d"))
        two["why"]["spacing"] = sp_why
        notes.append("2D data set: only the 2d configuration applies")
    if "3d_lowres" in configs:
        configs["3d_cascade_fullres"] = _cascade_stage(configs["3d_fullres"])
        notes.append("3d_cascade_fullres added: 3d_fullres with 3d_lowres's segmentation as extra input channels "
                     "(train 3d_lowres on every fold first)")
    two["batch_dice"] = True
    configs = {**configs, "2d": two}
    for name, cfg in configs.items():
        cfg["data_identifier"] = "3d_fullres" if name == "3d_cascade_fullres" else name
        cfg["normalization"] = norm
        cfg["why"]["normalization"] = norm_why
        cfg["resampling"] = _resampling(cfg["spacing"])
        cfg["why"]["resampling"] = cfg["resampling"].pop("why")
    if override_config not in configs:
        raise fail(f"cannot apply overrides to configuration '{override_config}': this plan has "
                   f"{list(configs)}", "choose one of those with --config")
    return {
        "dataset": spec.name,
        "planner": PLANNER_NAME,
        "axis_order": "array axis order: (z, y, x) for 3D, (y, x) for 2D; spacing in mm, sizes in voxels",
        "memory_budget": {"gb": memory_gb, "preset": preset.name,
                          "assumed": (f"a GPU with {memory_gb:g} GB (nnU-Net's reference target"
                                      + ("" if preset.name == "default" else f" for {preset.name}") + ")"
                                      if memory_gb == preset.memory_gb else
                                      f"{memory_gb:g} GB, as given by --memory-gb")},
        "n_channels": spec.n_channels,
        "labels": spec.labels,
        "full_resolution_spacing": full_spacing,
        "median_shape_at_full_resolution": median_shape.tolist(),
        "configurations": configs,
        "default_configuration": main,  # without a budget: nnU-Net's main configuration (the budget planner's
        "notes": notes,                 # choice replaces it, see planning/budget.py)
    }


def _cascade_stage(full: Mapping[str, Any]) -> dict[str, Any]:
    """nnU-Net's cascade: the fullres plan, trained on 3d_fullres's preprocessed data with 3d_lowres's
    segmentation as one-hot input channels."""
    cfg = copy.deepcopy(dict(full))
    cfg["previous_stage"] = "3d_lowres"
    cfg["why"]["previous_stage"] = ("3d_lowres is planned: its cross-validation segmentation, resampled to this "
                                    "configuration's grid, is given as one-hot input channels (one per foreground "
                                    "label), as in nnU-Net's cascade")
    return cfg


def _plan_lowres(full: Mapping[str, Any], median_shape: npt.NDArray[np.float64], n_cases: int, n_classes: int,
                 memory_gb: float, network: str, overrides: _Overrides, preset: Preset = PRESETS["default"]
                 ) -> tuple[dict[str, Any] | None, str]:
    """3d_lowres only when the fullres patch covers under a quarter of the median image; spacing grows by 3%
    steps (coarse axes first) until it does. Dropped when the images shrink less than 2x."""
    full_sp = np.asarray(full["spacing"], dtype=np.float64)
    median_vox = float(np.prod(median_shape, dtype=np.float64))
    patch_vox = float(np.prod(full["patch_size"], dtype=np.float64))
    coverage = patch_vox / median_vox
    if coverage >= C.LOWRES_CREATION_THRESHOLD:
        return None, (f"no 3d_lowres: the 3d_fullres patch covers {coverage:.0%} of the median image "
                      f"(>= {C.LOWRES_CREATION_THRESHOLD:.0%})")
    sp = full_sp.copy()
    lowres = None
    steps = 0
    while patch_vox / median_vox < C.LOWRES_CREATION_THRESHOLD:
        ratio = sp.max() / sp
        if np.any(ratio > C.POOL_SPACING_RATIO):
            sp[ratio > C.POOL_SPACING_RATIO] *= C.LOWRES_SPACING_STEP
        else:
            sp *= C.LOWRES_SPACING_STEP
        steps += 1
        scaled = full_sp / sp * median_shape
        median_vox = float(np.prod(scaled, dtype=np.float64))
        lowres = plan_configuration(sp.tolist(), [round(float(s)) for s in scaled], median_vox * n_cases,
                                    n_classes, memory_gb, network=network, preset=preset, **overrides)
        patch_vox = float(np.prod(lowres["patch_size"], dtype=np.float64))
    shrink = float(np.prod(median_shape, dtype=np.float64)) / median_vox
    if shrink < C.LOWRES_MIN_SIZE_RATIO:
        return None, (f"no 3d_lowres: the fullres patch covers {coverage:.0%} of the median image, but a lowres "
                      f"spacing would shrink the images only {shrink:.2f}x (< {C.LOWRES_MIN_SIZE_RATIO:g}x)")
    assert lowres is not None
    lowres["why"]["spacing"] = (f"3d_fullres covers only {coverage:.0%} of the median image (< "
                                f"{C.LOWRES_CREATION_THRESHOLD:.0%}); spacing grown in {steps} steps of "
                                f"{(C.LOWRES_SPACING_STEP - 1):.0%} until the patch covers "
                                f">= {C.LOWRES_CREATION_THRESHOLD:.0%}")
    return lowres, f"3d_lowres added: the 3d_fullres patch covers only {coverage:.0%} of the median image"
