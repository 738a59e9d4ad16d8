"""One configuration (2d, 3d_fullres, 3d_lowres): patch size, topology and batch size under a memory budget."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from segpipe.planning import constants as C
from segpipe.planning.plans import DEFAULT_TRAINER, NetworkPlan, Topology
from segpipe.planning.presets import PRESETS, Preset
from segpipe.planning.topology import derive_topology


def initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[float]:
    """A cube in millimetres (about 256^3 voxels in 3D, 2048^2 in 2D) shaped by the spacing, clipped to the
    median image shape (voxels, array axis order; may be fractional where the median is)."""
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dim = len(spacing)
    volume = C.INITIAL_PATCH_VOXELS_3D if dim == 3 else C.INITIAL_PATCH_VOXELS_2D
    patch = [round(v) for v in inv * (volume / np.prod(inv)) ** (1 / dim)]
    return [min(p, m) for p, m in zip(patch, median_shape)]


def _estimate(topo: Topology, patch: Sequence[int], n_classes: int, preset: Preset) -> int:
    return preset.activations(patch, topo.strides, topo.features_per_stage, n_classes)


def _preset_topology(topo: Topology, preset: Preset) -> Topology:
    """``topo`` with the preset's convs (or residual blocks) per encoder stage and convs per decoder stage."""
    return dataclasses.replace(topo, n_conv_per_stage=preset.encoder_convs(topo.n_stages),
                               n_conv_per_stage_decoder=(preset.convs_decoder,) * (topo.n_stages - 1))


def _shrink(spacing: Sequence[float], median_shape: Sequence[float], topo: Topology, patch: Sequence[int]
            ) -> tuple[Topology, tuple[int, ...]] | None:
    """One shrink step: the axis largest relative to the median shape loses one total stride (as the topology
    of the smaller patch has it); the next axis when that one cannot shrink (below ``FEATUREMAP_MIN_EDGE``
    voxels, or a patch too small for a U-Net of two stages); None when no axis can."""
    ratios = [p / m for p, m in zip(patch, median_shape)]
    for axis in (int(a) for a in np.argsort(ratios)[::-1]):
        trial = list(patch)
        trial[axis] -= topo.total_stride[axis]
        if trial[axis] < 1:
            continue
        smaller = list(patch)
        try:
            smaller[axis] -= derive_topology(spacing, trial)[0].total_stride[axis]
            if smaller[axis] >= C.FEATUREMAP_MIN_EDGE:
                return derive_topology(spacing, smaller)
        except ValueError:  # too small to pool once: not a U-Net
            continue
    return None


def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], n_voxels_dataset: float,
                       n_classes: int, memory_gb: float = C.DEFAULT_MEMORY_GB,
                       patch_override: Sequence[int] | None = None, batch_override: int | None = None,
                       network: str = "plain", preset: Preset = PRESETS["default"], in_channels: int = 1
                       ) -> dict[str, Any]:
    """Plan one configuration at ``spacing`` (mm) for images of ``median_shape`` (voxels), both array order.

    ``n_voxels_dataset``: approximate voxels of the whole dataset at this spacing (for the batch cap).
    ``preset`` (:mod:`segpipe.planning.presets`) sets the memory model, the encoder's convs or residual blocks
    per stage and the batch cap. When ``network`` declares its own memory estimate
    (:mod:`segpipe.planning.network_memory`; ``in_channels``: the network's input channels), the patch is shrunk
    and the batch chosen by that estimate against ``memory_gb`` instead of by the preset's U-Net memory model.
    Returns a JSON-ready dict with the choices and a ``why`` entry per choice (``why["memory"]``: which estimate
    was used).
    """
    from segpipe.planning.network_memory import network_memory

    dim = len(spacing)
    why: dict[str, str] = {}
    reference, ref_bs = preset.reference(dim, memory_gb)
    own = network_memory(network, in_channels, n_classes, memory_gb)

    def too_big(topo: Topology, patch: Sequence[int]) -> bool:
        """A batch of ``MIN_BATCH_SIZE`` patches does not fit the budget (by the estimate in use)."""
        if own is not None:
            return not own.fits(spacing, median_shape, _preset_topology(topo, preset), patch, C.MIN_BATCH_SIZE)
        return _estimate(topo, patch, n_classes, preset) / ref_bs * C.MIN_BATCH_SIZE > reference

    if patch_override is not None:
        topo, patch = derive_topology(spacing, patch_override)
        why["patch_size"] = (f"set by the user ({list(patch_override)}), padded to the total stride "
                             f"{list(topo.total_stride)}")
        shrunk = 0
    else:
        start = initial_patch(spacing, median_shape)
        topo, patch = derive_topology(spacing, start)
        shrunk, floor = 0, False
        while too_big(topo, patch):
            step = _shrink(spacing, median_shape, topo, patch)
            if step is None:
                floor = True
                break
            topo, patch = step
            shrunk += 1
        vol = "256^3" if dim == 3 else "2048^2"
        why["patch_size"] = (f"a {vol}-voxel cube in mm shaped by the spacing, clipped to the median image shape "
                             f"{[round(float(m), 1) for m in median_shape]}, padded to the total stride "
                             f"{list(topo.total_stride)}")
        if shrunk:
            why["patch_size"] += (f"; shrunk {shrunk} step(s), each on the axis largest relative to the median "
                                  f"shape, until a batch of {C.MIN_BATCH_SIZE} fits {memory_gb:g} GB"
                                  + (f" by network '{network}''s own memory estimate" if own is not None else ""))
        if floor:
            why["patch_size"] += (f"; every axis is at its smallest ({C.FEATUREMAP_MIN_EDGE} voxels or one stride): "
                                  f"a batch of {C.MIN_BATCH_SIZE} still does not fit {memory_gb:g} GB")
    features = list(topo.features_per_stage)
    estimate = _estimate(topo, patch, n_classes, preset)
    if own is not None:
        fit_bs = own.largest_batch(spacing, median_shape, _preset_topology(topo, preset), patch)
    else:
        fit_bs = round(reference / estimate * ref_bs)
    cap_bs = round(n_voxels_dataset * preset.max_dataset_covered / float(np.prod(patch, dtype=np.float64)))
    if batch_override is not None:
        batch = int(batch_override)
        why["batch_size"] = f"set by the user ({batch})"
    else:
        batch = max(min(fit_bs, cap_bs), C.MIN_BATCH_SIZE)
        limit = ("the memory budget" if fit_bs <= cap_bs
                 else f"the {preset.max_dataset_covered:.0%} data set cover cap")
        if batch == C.MIN_BATCH_SIZE and min(fit_bs, cap_bs) < C.MIN_BATCH_SIZE:
            limit = f"the minimum of {C.MIN_BATCH_SIZE}"
        why["batch_size"] = (f"{batch}: {fit_bs} would fit {memory_gb:g} GB, {cap_bs} covers "
                             f"{preset.max_dataset_covered:.0%} of the data set's voxels; limited by {limit}")
    memory: dict[str, Any] = {"budget_gb": memory_gb, "feature_map_voxels": int(estimate),
                              "batch_fitting_budget": int(fit_bs), "batch_covering_5_percent": int(cap_bs),
                              "n_voxels_dataset": float(n_voxels_dataset), "preset": preset.name}
    if own is not None:
        need = own.bytes(spacing, median_shape, _preset_topology(topo, preset), patch, batch)
        memory.update({"estimate": "network", "network_estimate_bytes": int(need)})
        why["memory"] = (f"network '{network}''s own memory_estimate: {need / 2 ** 30:.2f} GB for a training step "
                         f"of patch {[int(p) for p in patch]}, batch {batch}, against the {memory_gb:g} GB budget "
                         "(used instead of the planner's U-Net memory model)")
    else:
        memory["estimate"] = "unet-model"
        why["memory"] = (f"the planner's U-Net memory model (preset {preset.name}): {int(estimate)} feature map "
                         f"voxels per patch, against the reference for {memory_gb:g} GB (network '{network}' "
                         "declares no memory_estimate)")
    topo = _preset_topology(topo, preset)
    pools = list(topo.pools_per_axis)
    coarse_k1 = [a for a in range(dim) if topo.kernel_sizes[0][a] == 1]
    why["topology"] = (f"{topo.n_stages} stages; pooling per axis {pools} (an axis pools while its feature map "
                       f"stays >= {C.FEATUREMAP_MIN_EDGE} voxels and its spacing is within "
                       f"{C.POOL_SPACING_RATIO:g}x the finest); features {features}")
    if coarse_k1:
        why["topology"] += f"; kernel size 1 on axis {coarse_k1} in early stages until its spacing catches up"
    if preset.blocks_encoder is not None:
        why["topology"] += (f"; preset {preset.name}: residual blocks per encoder stage "
                            f"{list(topo.n_conv_per_stage)}, {preset.convs_decoder} conv per decoder stage")
    return {
        "spacing": [float(s) for s in spacing],
        "median_shape": [float(m) for m in median_shape],
        "patch_size": [int(p) for p in patch],
        "batch_size": batch,
        "trainer": DEFAULT_TRAINER,
        "network": NetworkPlan(network, topo).to_json(),
        "memory": memory,
        "why": why,
    }
