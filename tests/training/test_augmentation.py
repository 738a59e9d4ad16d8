"""Tests of segpipe/training/augmentation.py: the batchgenerators pipeline that make_batch runs on every training
batch.

Batches are ``{"data": (b, c, *crop) float32, "seg": (b, 1, *crop) float32}`` with spatial axes ``(y, x)`` or
``(z, y, x)`` in voxels; the crop is :func:`augmentation_patch_size` of the final patch and comes back cut to the
patch. Randomness comes from numpy's (and Python's) global generators, seeded per batch by make_batch.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from conftest import synthetic_image, synthetic_segmentation

from segpipe.training.augmentation import (
    ROTATION_2D,
    ROTATION_3D,
    InPlaneSpatialTransform,
    augmentation_patch_size,
    center_crop,
    rotation_ranges,
    training_transforms,
)

PATCHES = {"2d": [16, 20], "3d": [8, 16, 12]}  # (y, x) / (z, y, x) voxels, non-square on purpose
FLAT_3D = [4, 32, 32]  # z much thinner than y, x: in-plane ("dummy 2D") augmentation
LABELS = {0, 1, 2}
SEEDS = range(12)


def _batch(crop: list[int], seed: int = 0, n_channels: int = 2) -> dict[str, np.ndarray]:
    """Two samples: labels 0/1/2 as two ellipsoid blobs, images bright where the labels are, plus noise."""
    rng = np.random.default_rng(seed)
    segs = [synthetic_segmentation(crop, 2, rng, radius_fraction=(0.2, 0.3)) for _ in range(2)]
    data = np.stack([synthetic_image(s, n_channels, 2, rng) for s in segs])
    return {"data": data.astype(np.float32), "seg": np.stack([s[None] for s in segs]).astype(np.float32)}


def _run(transform: Callable, batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """``transform`` on a copy of ``batch`` with the global generators seeded as make_batch seeds them."""
    np.random.seed(seed)
    random.seed(seed)
    return transform(**{k: v.copy() for k, v in batch.items()})


def _forced_spatial(patch: list[int]) -> SpatialTransform | InPlaneSpatialTransform:
    """The pipeline's spatial transform with rotation and scaling applied to every sample (for flat 3D patches:
    the in-plane wrapper around a 2D SpatialTransform)."""
    spatial = training_transforms(patch).transforms[0]
    inner = spatial.spatial if isinstance(spatial, InPlaneSpatialTransform) else spatial
    assert isinstance(inner, SpatialTransform)
    inner.p_rot_per_sample = inner.p_scale_per_sample = 1.0
    return spatial


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# --- sizes and ranges -------------------------------------------------------------------------------------------

def test_rotation_ranges_per_dimension():
    assert rotation_ranges(PATCHES["2d"]) == ((-ROTATION_2D, ROTATION_2D), (0, 0), (0, 0), False)
    rx, ry, rz, dummy = rotation_ranges(PATCHES["3d"])
    assert rx == ry == rz == (-ROTATION_3D, ROTATION_3D) and not dummy
    rx, ry, rz, dummy = rotation_ranges(FLAT_3D)  # in-plane only: around the first (z) axis
    assert dummy and rx == (-ROTATION_2D, ROTATION_2D) and ry == rz == (0, 0)


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_augmentation_crop_is_never_smaller_than_the_patch(dim: str):
    patch = PATCHES[dim]
    crop = augmentation_patch_size(patch)
    assert len(crop) == len(patch) and all(isinstance(c, int) and c >= p for c, p in zip(crop, patch))


def test_2d_crop_holds_the_patch_rotated_by_any_angle():
    y, x = PATCHES["2d"]
    crop = augmentation_patch_size([y, x])
    for a in np.linspace(0, np.pi / 2, 91):
        c, s = abs(np.cos(a)), abs(np.sin(a))
        assert c * y + s * x <= crop[0] + 1e-6 and s * y + c * x <= crop[1] + 1e-6, np.rad2deg(a)


# --- the whole pipeline -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_pipeline_cuts_to_the_patch_and_keeps_dtypes(dim: str):
    patch = PATCHES[dim]
    batch = _batch(augmentation_patch_size(patch))
    for seed in SEEDS:
        out = _run(training_transforms(patch), batch, seed)
        assert out["data"].shape == (2, 2, *patch) and out["seg"].shape == (2, 1, *patch)
        assert out["data"].dtype == np.float32 and out["seg"].dtype == np.float32
        assert np.isfinite(out["data"]).all()


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_labels_stay_in_the_label_set(dim: str):
    """Labels are never interpolated into values between classes; outside the image they become -1 (ignored)."""
    patch = PATCHES[dim]
    batch = _batch(augmentation_patch_size(patch))
    for transform in (training_transforms(patch), _forced_spatial(patch)):
        for seed in SEEDS:
            values = set(np.unique(_run(transform, batch, seed)["seg"]).tolist())
            assert values <= LABELS | {-1}, (seed, values)


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_the_same_seed_gives_the_same_batch_and_another_seed_another(dim: str):
    patch = PATCHES[dim]
    batch = _batch(augmentation_patch_size(patch))
    a, b = _run(training_transforms(patch), batch, 5), _run(training_transforms(patch), batch, 5)
    assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["seg"], b["seg"])
    others = [_run(training_transforms(patch), batch, s) for s in (6, 7, 8)]
    assert any(not np.array_equal(a["data"], o["data"]) for o in others)


# --- spatial transforms move image and label together ------------------------------------------------------------

@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_rotation_and_scaling_move_the_label_with_its_image(dim: str):
    """Where the image's blobs land after rotation and scaling is where their labels land."""
    patch = PATCHES[dim]
    crop = augmentation_patch_size(patch)
    batch = _batch(crop, n_channels=1)
    batch["data"] = (batch["seg"] > 0).astype(np.float32) * 100.0  # the image is the foreground, noise-free
    moved = 0
    for seed in SEEDS:
        out = _run(_forced_spatial(patch), batch, seed)
        image_fg, label_fg = out["data"][:, 0] > 50, out["seg"][:, 0] > 0
        assert label_fg.any() and _dice(image_fg, label_fg) > 0.9, seed
        moved += not np.array_equal(out["seg"], center_crop(batch, patch)["seg"])
    assert moved >= len(SEEDS) // 2  # the transform really moved things


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_mirroring_flips_image_and_label_identically(dim: str):
    patch = PATCHES[dim]
    batch = center_crop(_batch(augmentation_patch_size(patch), n_channels=1), patch)
    batch["data"] = batch["seg"] * 10.0 + 1.0
    mirror = training_transforms(patch).transforms[-1]
    assert isinstance(mirror, MirrorTransform)
    flipped = 0
    for seed in SEEDS:
        out = _run(mirror, batch, seed)
        np.testing.assert_array_equal(out["data"], out["seg"] * 10.0 + 1.0)
        assert sorted(np.unique(out["seg"])) == sorted(np.unique(batch["seg"]))  # a flip, not a resampling
        flipped += not np.array_equal(out["seg"], batch["seg"])
    assert flipped > 0


def test_flat_3d_patches_rotate_in_plane_only():
    """With a thin z axis the rotation is around z: a label constant along z stays the same in every slice."""
    crop = augmentation_patch_size(FLAT_3D)
    rng = np.random.default_rng(0)
    plane = synthetic_segmentation(crop[1:], 2, rng)
    seg = np.broadcast_to(plane, crop).astype(np.float32)[None, None]
    batch = {"data": seg * 50.0, "seg": seg.copy()}
    spatial = _forced_spatial(FLAT_3D)
    assert isinstance(spatial, InPlaneSpatialTransform)
    spatial.spatial.p_scale_per_sample = 0.0  # rotation only (scaling along z is the next test)
    for seed in SEEDS:
        out = _run(spatial, batch, seed)["seg"][0, 0]
        for z in range(1, FLAT_3D[0]):
            np.testing.assert_array_equal(out[z], out[0])


def test_flat_3d_patches_are_not_scaled_across_slices():
    crop = augmentation_patch_size(FLAT_3D)
    batch = {"data": np.ones((1, 1, *crop), np.float32), "seg": np.ones((1, 1, *crop), np.float32)}
    for seed in range(50):
        out = _run(_forced_spatial(FLAT_3D), batch, seed)["seg"][0, 0]
        assert not any((out[z] == -1).all() for z in range(FLAT_3D[0])), seed


# --- intensity transforms leave labels alone ---------------------------------------------------------------------

def _intensity_transforms(patch: list[int]) -> list:
    """The pipeline's transforms that are neither spatial nor mirroring, each forced to apply to every sample."""
    out = [t for t in training_transforms(patch).transforms
           if not isinstance(t, (SpatialTransform, InPlaneSpatialTransform, MirrorTransform))]
    for t in out:
        for attr in ("p_per_sample", "p_per_channel"):
            if hasattr(t, attr):
                setattr(t, attr, 1.0)
    return out


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_intensity_transforms_change_the_image_but_not_the_label(dim: str):
    patch = PATCHES[dim]
    batch = center_crop(_batch(augmentation_patch_size(patch)), patch)
    transforms = _intensity_transforms(patch)
    assert len(transforms) >= 5  # noise, blur, brightness, contrast, low resolution, gamma
    for t in transforms:
        changed = 0
        for seed in range(4):
            out = _run(t, batch, seed)
            np.testing.assert_array_equal(out["seg"], batch["seg"], err_msg=type(t).__name__)
            assert out["data"].shape == batch["data"].shape and np.isfinite(out["data"]).all()
            changed += not np.allclose(out["data"], batch["data"])
        assert changed, f"{type(t).__name__} never changed the image"


# --- center_crop (the path without augmentation) ------------------------------------------------------------------

@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_center_crop_cuts_the_same_central_window_from_image_and_label(dim: str):
    patch = PATCHES[dim]
    crop = [p + 5 for p in patch]  # odd margins: the extra voxel goes to the far side
    batch = _batch(crop)
    out = center_crop(batch, patch)
    window = (slice(None), slice(None), *(slice(2, 2 + p) for p in patch))
    np.testing.assert_array_equal(out["data"], batch["data"][window])
    np.testing.assert_array_equal(out["seg"], batch["seg"][window])
    assert out["data"].flags["C_CONTIGUOUS"] and out["seg"].flags["C_CONTIGUOUS"]


def test_flat_3d_patches_are_cropped_with_no_margin_across_slices():
    crop = augmentation_patch_size(FLAT_3D)
    assert crop[0] == FLAT_3D[0] and crop[1] > FLAT_3D[1] and crop[2] > FLAT_3D[2]
    out = _run(_forced_spatial(FLAT_3D), _batch(crop), 0)
    assert out["data"].shape[2:] == tuple(FLAT_3D) and out["seg"].shape[2:] == tuple(FLAT_3D)
