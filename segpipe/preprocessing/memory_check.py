"""Refuse resampling that would make an absurdly large array, before allocating it.

A wrong spacing in a file header (e.g. 1e-4 mm instead of 1 mm, or a 2D image without a pixel size among
images with one) makes resampling to the plan's spacing multiply the voxel count by millions; without this
check the process allocates until the system kills it.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from segpipe.errors import fail

log = logging.getLogger(__name__)

MAX_VOXELS = 2 ** 31            # per channel; beyond this, index arithmetic in several libraries overflows
MAX_MEMORY_FRACTION = 0.5       # of the machine's RAM, for the arrays resampling one case needs at once
FALLBACK_RAM_BYTES = 16 * 2 ** 30


def total_ram_bytes() -> int:
    """The machine's physical memory (bytes); a conservative 16 GiB when it cannot be determined."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return FALLBACK_RAM_BYTES


def resampling_bytes(shape, n_channels: int, with_label: bool) -> int:
    """Bytes resampling one case to ``shape`` needs at peak: float32 output per channel plus one channel being
    zoomed, and for a label map the running best probability, one class map and the int16 output."""
    n = float(np.prod([float(s) for s in shape]))
    per_voxel = 4 * (n_channels + 1) + (4 + 4 + 2 if with_label else 0)
    return int(n * per_voxel)


def check_resampled_size(shape_before, spacing, target_spacing, shape_after, n_channels: int,
                         with_label: bool, case_id: str | None = None, file: str | None = None,
                         ram_bytes: int | None = None) -> None:
    """Raise a user error when resampling ``shape_before`` at ``spacing`` to ``target_spacing`` (giving
    ``shape_after``) would exceed :data:`MAX_VOXELS` or :data:`MAX_MEMORY_FRACTION` of the RAM."""
    n_vox = float(np.prod([float(s) for s in shape_after]))
    need = resampling_bytes(shape_after, n_channels, with_label)
    ram = ram_bytes if ram_bytes is not None else total_ram_bytes()
    if n_vox <= MAX_VOXELS and need <= MAX_MEMORY_FRACTION * ram:
        return
    limit = (f"more than {MAX_VOXELS:.3g} voxels" if n_vox > MAX_VOXELS else
             f"~{need / 2 ** 30:.1f} GiB, more than {MAX_MEMORY_FRACTION:.0%} of this machine's "
             f"{ram / 2 ** 30:.1f} GiB")
    raise fail(f"resampling from spacing {_mm(spacing)} mm to the plan's {_mm(target_spacing)} mm would turn "
               f"shape {[int(s) for s in shape_before]} into {[int(s) for s in shape_after]} "
               f"({n_vox:.3g} voxels, {limit}); one of these spacings is most likely wrong",
               "check the spacing in this file's header and in the other cases' (the plan's spacing is their "
               "median, see `segpipe plan --explain`; a unit mix-up such as m vs mm?); for 2D images give "
               "--pixel-spacing MM or --spacing-csv CSV; or leave the case out", file=file, case=case_id)


def _mm(spacing) -> list[float]:
    return [float(f"{float(s):.4g}") for s in spacing]
