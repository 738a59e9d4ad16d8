"""Data augmentation with batchgenerators: rotation, scaling, noise, blur, brightness, contrast, low
resolution simulation, gamma and mirroring (probabilities as in nnU-Net's default trainer).

Batches are dicts ``{"data": (b, c, *patch), "seg": (b, 1, *patch)}``. Spatial augmentation needs context
beyond the patch: crops are taken at :func:`augmentation_patch_size` and cut to the final patch after rotation
and scaling. Randomness comes from numpy's global generator, which the data stream seeds per batch.
"""
from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

ROTATION_3D = np.deg2rad(30)
ROTATION_2D = np.pi
SCALE = (0.7, 1.4)
ANISOTROPIC_PATCH_RATIO = 3.0  # 3D patches this flat get in-plane (2D) spatial augmentation only


def rotation_ranges(patch) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], bool]:
    """Rotation ranges (radians) around each axis, and whether augmentation is in-plane only ("dummy 2D")."""
    if len(patch) == 2:
        return (-ROTATION_2D, ROTATION_2D), (0, 0), (0, 0), False
    dummy_2d = max(patch) / min(patch) > ANISOTROPIC_PATCH_RATIO
    if dummy_2d:
        return (-ROTATION_2D, ROTATION_2D), (0, 0), (0, 0), True
    r = (-ROTATION_3D, ROTATION_3D)
    return r, r, r, False


def _rot(axis: int, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def augmentation_patch_size(patch) -> list[int]:
    """Patch size to crop before spatial augmentation: the bounding box of the final patch rotated by the
    largest angles (and shrunk by the smallest scale 0.85 used for this estimate), never smaller than
    ``patch``. Spatial order as ``patch``."""
    rx, ry, rz, dummy = rotation_ranges(patch)
    p = np.asarray(patch, dtype=np.float64)
    if len(patch) == 2 or dummy:
        inplane = p[-2:]
        best = inplane.copy()
        for a in np.linspace(0, min(abs(rx[1]), np.pi / 2), 10):
            c, s = abs(np.cos(a)), abs(np.sin(a))
            best = np.maximum(best, [c * inplane[0] + s * inplane[1], s * inplane[0] + c * inplane[1]])
        out = np.concatenate([p[:-2], best])
    else:
        corners = np.array(np.meshgrid(*[[-v / 2, v / 2] for v in p], indexing="ij")).reshape(3, -1)
        out = p.copy()
        for ax_angles in np.linspace(0, rx[1], 4):
            m = _rot(0, ax_angles) @ _rot(1, ax_angles) @ _rot(2, ax_angles)
            ext = np.abs(m @ corners).max(axis=1) * 2
            out = np.maximum(out, ext)
    out = out / 0.85
    if dummy:
        out[0] = p[0]  # in-plane augmentation never rotates or scales across slices: no margin along z
    return [int(np.ceil(max(o, q))) for o, q in zip(out, patch)]


class InPlaneSpatialTransform(AbstractTransform):
    """``spatial`` (a 2D transform over ``(y, x)``) applied to every slice of 3D batches ``(b, c, z, y, x)``:
    the slices become channels, so all slices of a sample get the same rotation and scale and nothing moves
    across slices (nnU-Net's "dummy 2D" augmentation of flat patches)."""

    def __init__(self, spatial: SpatialTransform):
        self.spatial = spatial

    def __call__(self, **batch: np.ndarray) -> dict[str, np.ndarray]:
        shapes = {k: batch[k].shape for k in ("data", "seg") if batch.get(k) is not None}
        for k, (b, c, z, y, x) in shapes.items():
            batch[k] = batch[k].reshape(b, c * z, y, x)
        batch = self.spatial(**batch)
        for k, (b, c, z, _, _) in shapes.items():
            batch[k] = batch[k].reshape(b, c, z, *batch[k].shape[2:])
        return batch


def training_transforms(patch, mirror: bool = True) -> Compose:
    """The training augmentation pipeline for a final spatial ``patch``."""
    rx, ry, rz, dummy = rotation_ranges(patch)
    ignore_axes = (0,) if dummy else None
    spatial = SpatialTransform(list(patch[1:]) if dummy else list(patch), patch_center_dist_from_border=None,
                               do_elastic_deform=False, do_rotation=True, angle_x=rx, angle_y=ry, angle_z=rz,
                               p_rot_per_axis=1, do_scale=True, scale=SCALE, border_mode_data="constant",
                               border_cval_data=0, order_data=3, border_mode_seg="constant", border_cval_seg=-1,
                               order_seg=1, random_crop=False, p_el_per_sample=0, p_scale_per_sample=0.2,
                               p_rot_per_sample=0.2, independent_scale_for_each_axis=False)
    transforms = [
        InPlaneSpatialTransform(spatial) if dummy else spatial,
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                       ignore_axes=ignore_axes),
        GammaTransform((0.7, 1.5), True, True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), False, True, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror:
        transforms.append(MirrorTransform(tuple(range(len(patch)))))
    return Compose(transforms)


def center_crop(batch: dict, patch) -> dict:
    """Cut a batch's arrays to the central ``patch`` (used when no spatial transform runs)."""
    out = {}
    for k in ("data", "seg"):
        arr = batch[k]
        sl = [slice(None), slice(None)]
        for n, p in zip(arr.shape[2:], patch):
            a = (n - p) // 2
            sl.append(slice(a, a + p))
        out[k] = np.ascontiguousarray(arr[tuple(sl)])
    return out
