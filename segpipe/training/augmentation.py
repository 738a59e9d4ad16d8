"""Training data augmentation, one sample at a time, with torch and numpy in the loader's worker processes.

The transforms and their probabilities per sample are nnU-Net's default trainer's: rotation (0.2) and scaling
(0.2), Gaussian noise (0.1), Gaussian blur (0.2, then each channel 0.5), brightness (0.15), contrast (0.15), low
resolution simulation (0.25, then each channel 0.5), inverted gamma (0.1), gamma (0.3) and mirroring (each axis 0.5).

Arrays: image ``(c, *patch)`` float32 and label ``(k, *patch)`` integer, channels first, spatial axes ``(z, y, x)``
for 3D and ``(y, x)`` for 2D, all sizes in voxels. ``k`` is 1, or 2 for a cascade (the label, then the previous
stage's segmentation). Angles are in radians. A scale factor is the extent sampled over the extent of the patch:
1.4 samples a region 1.4 times the patch (structures look smaller), 0.7 zooms in.

How it differs from running batchgenerators on a batch (what segpipe did before, measured in
docs/benchmarks.md): rotation and scaling are one affine map from the *output* patch into the case, so only the
box that the rotated, scaled patch covers is read from disk, and the ~64% of samples that are neither rotated nor
scaled read exactly the patch (nothing larger is cropped and cut back). The image is resampled linearly and the
label once by nearest neighbour (``torch.nn.functional.grid_sample``) rather than by cubic splines and one linear
interpolation per class. Randomness comes only from the ``numpy.random.Generator`` passed in, never from global
state, so a batch is a pure function of its seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ROTATION_3D = math.radians(30)
ROTATION_2D = math.pi
ROTATION_2D_ELONGATED = math.radians(15)  # 2D patches whose sides differ by more than 1.5x (as nnU-Net)
ELONGATED_2D_RATIO = 1.5
SCALE = (0.7, 1.4)
ANISOTROPIC_PATCH_RATIO = 3.0  # 3D patches this flat get in-plane (2D) spatial augmentation only
P_ROTATION, P_SCALE = 0.2, 0.2
P_NOISE, NOISE_STD = 0.1, (0.0, 0.1)  # nnU-Net's "noise_variance" (0, 0.1) is used as the standard deviation
P_BLUR, P_BLUR_CHANNEL, BLUR_SIGMA = 0.2, 0.5, (0.5, 1.0)
P_BRIGHTNESS, BRIGHTNESS = 0.15, (0.75, 1.25)
P_CONTRAST, CONTRAST = 0.15, (0.75, 1.25)
P_LOW_RES, P_LOW_RES_CHANNEL, LOW_RES_ZOOM = 0.25, 0.5, (0.5, 1.0)
P_GAMMA_INVERTED, P_GAMMA, GAMMA = 0.1, 0.3, (0.7, 1.5)
P_MIRROR = 0.5
LABEL_OUTSIDE = -1  # label value where a patch reaches outside the image (ignored by the loss)

Reader = Callable[[list[int], list[int]], tuple[np.ndarray, np.ndarray]]


def in_plane_only(patch: Sequence[int]) -> bool:
    """Whether a 3D ``patch`` is flat enough (largest / smallest side > 3) to be augmented in-plane only: rotation
    and scaling act on ``(y, x)`` of every slice alike and nothing moves across slices (nnU-Net's "dummy 2D")."""
    return len(patch) == 3 and max(patch) / min(patch) > ANISOTROPIC_PATCH_RATIO


def _rotation(n: int, axis_a: int, axis_b: int, angle: float) -> np.ndarray:
    m = np.eye(n)
    c, s = math.cos(angle), math.sin(angle)
    m[axis_a, axis_a], m[axis_a, axis_b], m[axis_b, axis_a], m[axis_b, axis_b] = c, -s, s, c
    return m


def _scale_factor(rng: np.random.Generator) -> float:
    """Half of the scalings zoom in (0.7..1), half zoom out (1..1.4), as in nnU-Net."""
    return float(rng.uniform(SCALE[0], 1.0) if rng.random() < 0.5 else rng.uniform(1.0, SCALE[1]))


def draw_spatial(patch: Sequence[int], rng: np.random.Generator) -> np.ndarray | None:
    """The random affine map of one sample, or None (neither rotated nor scaled: read the patch as it is).

    The ``(d, d)`` matrix ``m`` (``d = len(patch)``, spatial axes in array order) maps an output voxel's offset
    from the patch centre to the offset in the case it is sampled from: ``source = centre + m @ offset``."""
    d = len(patch)
    rotate, scale = rng.random() < P_ROTATION, rng.random() < P_SCALE
    if not (rotate or scale):
        return None
    flat = in_plane_only(patch)
    m = np.eye(d)
    if rotate:
        if d == 2 or flat:  # one angle in the (y, x) plane
            limit = (ROTATION_2D_ELONGATED if d == 2 and max(patch) / min(patch) > ELONGATED_2D_RATIO
                     else ROTATION_2D)
            m = _rotation(d, d - 2, d - 1, float(rng.uniform(-limit, limit)))
        else:  # around each of the three axes
            for axis in range(3):
                a, b = [k for k in range(3) if k != axis]
                m = m @ _rotation(3, a, b, float(rng.uniform(-ROTATION_3D, ROTATION_3D)))
    if scale:
        s = np.full(d, _scale_factor(rng))
        if flat:
            s[0] = 1.0  # never across slices
        m = m @ np.diag(s)
    return m


def source_box(lower: Sequence[int], size: Sequence[int], matrix: np.ndarray) -> tuple[list[int], list[int]]:
    """The box ``(lower, size)`` of the case that a patch at ``lower .. lower + size`` (spatial ``(z, y, x)``,
    voxels) covers once ``matrix`` (over the last ``len(matrix)`` axes) maps it: the bounding box of the mapped
    patch plus one voxel for linear interpolation. Axes that ``matrix`` does not cover keep their box."""
    d = len(matrix)
    lower_out, size_out = list(lower[:-d]), list(size[:-d])
    lo = np.asarray(lower[-d:], dtype=np.float64)
    sz = np.asarray(size[-d:], dtype=np.float64)
    centre = lo + (sz - 1) / 2
    half = np.abs(matrix) @ ((sz - 1) / 2)
    first = np.floor(centre - half).astype(int) - 1
    last = np.ceil(centre + half).astype(int) + 1
    return lower_out + first.tolist(), size_out + (last - first + 1).tolist()


def resample(data: np.ndarray, seg: np.ndarray, matrix: np.ndarray, centre: Sequence[float],
             patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The ``patch`` sampled from a box ``data`` ``(c, *box)`` / ``seg`` ``(k, *box)`` (spatial axes as
    ``patch``): output voxel at offset ``o`` from the patch centre takes the box's value at ``centre + matrix @ o``
    (``centre`` in box voxel coordinates). Image linearly, 0 outside the box; label by nearest neighbour,
    :data:`LABEL_OUTSIDE` outside for the label channel and 0 for a cascade's previous-stage channel."""
    # source = centre + matrix @ offset, in grid_sample's normalized coordinates (-1 .. 1 spans the first .. last
    # voxel of the box, align_corners=True) and with its axis order (x, y[, z]) last; built as a sum of one
    # broadcast term per output axis (7x faster than affine_grid on a 56x192x160 patch)
    box = np.asarray(data.shape[1:], dtype=np.float64)
    to_norm = 2 / np.maximum(box - 1, 1)
    linear = torch.as_tensor((to_norm[:, None] * matrix)[::-1].T.copy(), dtype=torch.float32)  # (out axis, xyz)
    shift = torch.as_tensor((to_norm * np.asarray(centre, dtype=np.float64) - 1)[::-1].copy(), dtype=torch.float32)
    d = len(patch)
    grid = shift.view(*([1] * d), d).expand(*patch, d).clone()
    for axis, p in enumerate(patch):
        offsets = torch.arange(p, dtype=torch.float32) - (p - 1) / 2
        shape = [1] * d
        shape[axis] = p
        grid += offsets.view(*shape, 1) * linear[axis]
    grid = grid[None]
    image = F.grid_sample(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None], grid,
                          mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    labels = torch.from_numpy(seg.astype(np.float32))
    labels[0] -= LABEL_OUTSIDE  # outside reads 0: shift so that 0 comes back as LABEL_OUTSIDE
    labels = F.grid_sample(labels[None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
    labels[0] += LABEL_OUTSIDE
    return image.numpy(), labels.round().to(torch.int16).numpy()


def spatial_sample(read: Reader, lower: list[int], size: list[int], patch: Sequence[int],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sample's image ``(c, *patch)`` and label ``(k, *patch)`` at the box ``(lower, size)`` (3 spatial axes;
    one slice thick for a 2D ``patch``), rotated and scaled at random. ``read(lower, size)`` returns a box of the
    case ``((c, *size), (k, *size))``, padded outside the image; only the box the transformed patch covers is
    read."""
    matrix = draw_spatial(patch, rng)
    if matrix is None:
        data, seg = read(lower, size)
        return (data[:, 0], seg[:, 0]) if len(patch) == 2 else (data, seg)
    box_lower, box_size = source_box(lower, size, matrix)
    data, seg = read(box_lower, box_size)
    if len(patch) == 2:
        data, seg = data[:, 0], seg[:, 0]
    d = len(patch)
    centre = [lo - blo + (s - 1) / 2 for lo, blo, s in zip(lower[-d:], box_lower[-d:], size[-d:])]
    return resample(data, seg, matrix, centre, patch)


def _low_resolution(x: torch.Tensor, zoom: float, keep_axes: Sequence[int]) -> torch.Tensor:
    """``x`` (spatial axes only) downsampled by ``zoom`` (nearest) and back up (linear), simulating a coarser
    scan; ``keep_axes`` keep their resolution."""
    shape = list(x.shape)
    small = [n if ax in keep_axes else max(1, round(n * zoom)) for ax, n in enumerate(shape)]
    mode = "bilinear" if x.ndim == 2 else "trilinear"
    down = F.interpolate(x[None, None], size=small, mode="nearest")
    return F.interpolate(down, size=shape, mode=mode, align_corners=False)[0, 0]


def _gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma correction of ``x`` rescaled to [0, 1], keeping its mean and standard deviation."""
    if invert:
        x = -x
    mean, std = x.mean(), x.std()
    lo, span = x.min(), x.max() - x.min()
    x = ((x - lo) / (span + 1e-7)) ** gamma * span + lo
    x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
    return -x if invert else x


def _factor(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """Half below 1, half above (as nnU-Net draws contrast and gamma)."""
    return float(rng.uniform(bounds[0], 1.0) if rng.random() < 0.5 else rng.uniform(1.0, bounds[1]))


def intensity_and_mirror(data: np.ndarray, seg: np.ndarray, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Noise, blur, brightness, contrast, low resolution and gamma on the image ``(c, *patch)``, then mirroring
    of image and label ``(k, *patch)`` together. In flat 3D patches low resolution leaves ``z`` alone."""
    x = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the caller's array is untouched
    spatial = x.shape[1:]
    if rng.random() < P_NOISE:
        std = float(rng.uniform(*NOISE_STD))
        x += torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) * std
    if rng.random() < P_BLUR:
        for c in range(x.shape[0]):
            if rng.random() < P_BLUR_CHANNEL:
                x[c] = torch.from_numpy(ndimage.gaussian_filter(x[c].numpy(), float(rng.uniform(*BLUR_SIGMA)),
                                                                   truncate=3.0, mode="nearest"))
    if rng.random() < P_BRIGHTNESS:
        for c in range(x.shape[0]):
            x[c] *= float(rng.uniform(*BRIGHTNESS))
    if rng.random() < P_CONTRAST:
        for c in range(x.shape[0]):
            lo, hi, mean = x[c].min(), x[c].max(), x[c].mean()
            x[c] = ((x[c] - mean) * _factor(rng, CONTRAST) + mean).clamp(lo, hi)
    if rng.random() < P_LOW_RES:
        keep = (0,) if in_plane_only(list(spatial)) else ()
        for c in range(x.shape[0]):
            if rng.random() < P_LOW_RES_CHANNEL:
                x[c] = _low_resolution(x[c], float(rng.uniform(*LOW_RES_ZOOM)), keep)
    for p, invert in ((P_GAMMA_INVERTED, True), (P_GAMMA, False)):
        if rng.random() < p:
            for c in range(x.shape[0]):
                x[c] = _gamma(x[c], _factor(rng, GAMMA), invert)
    out, labels = x.numpy(), seg
    flips = tuple(1 + ax for ax in range(len(spatial)) if rng.random() < P_MIRROR)
    if flips:
        out, labels = np.flip(out, flips), np.flip(labels, flips)
    return np.ascontiguousarray(out), np.ascontiguousarray(labels)


def augmented_sample(read: Reader, lower: list[int], size: list[int], patch: Sequence[int],
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: :func:`spatial_sample`, then :func:`intensity_and_mirror`. Image ``(c, *patch)``
    float32, label ``(k, *patch)`` int16."""
    data, seg = spatial_sample(read, lower, size, patch, rng)
    data, seg = intensity_and_mirror(data, seg.astype(np.int16, copy=False), rng)
    return data, seg
