"""Sliding-window prediction of a whole (preprocessed) case with a patch-based network.

Windows overlap by at least 50 % (``step=0.5``); each window's softmax is weighted by a Gaussian importance
map (sigma = patch / 8) that trusts the patch centre more than its borders, accumulated, and divided by the
accumulated weights. Optionally, predictions for all ``2^k`` mirrorings of the given axes are averaged.

Cases are always ``(c, Z, Y, X)``. A 3D patch ``(pz, py, px)`` slides over all three axes; a 2D patch
``(py, px)`` slides over ``(Y, X)`` of every slice ``z`` (windows of different slices share a batch).

Memory: the result (float32, all classes) is the only case-sized array of class probabilities; networks (folds)
and mirrorings are summed per batch of windows, the softmax is taken in place, and padding never enters it.
It stays float32 (issue 12): a float16 sum would halve it and changed the argmax of only 4 of 14.6 M voxels on a
head-and-neck CT case, but the Gaussian's smallest weights (~1e-11 at the patch corners) vanish in float16, so
voxels reached only by window corners (the case's corners) would lose their probabilities.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segpipe.inference.uncertainty import entropy


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """A Gaussian over ``patch_size`` (float32), 1 at the centre, sigma = ``patch * sigma_scale`` per axis.

    The centre is the geometric centre ``(p - 1) / 2`` so that the map is mirror-symmetric. Values are
    clamped from below to the smallest nonzero value so that no voxel gets zero weight.
    """
    patch_size = [int(p) for p in patch_size]
    if not patch_size or min(patch_size) < 1:
        raise ValueError(f"invalid patch size {patch_size}")
    g = np.ones((), dtype=np.float64)
    for p in patch_size:
        sigma = max(p * sigma_scale, 1e-6)
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2.0
        g = np.multiply.outer(g, np.exp(-0.5 * (x / sigma) ** 2))
    g = (g / g.max()).astype(np.float32)
    if not np.all(g > 0):
        nonzero = g[g > 0]
        g = np.maximum(g, nonzero.min() if nonzero.size else np.float32(1))
    return g


def window_starts(image_size: int, patch: int, step: float = 0.5) -> list[int]:
    """Start indices of windows of size ``patch`` covering ``[0, image_size)`` with overlap >= ``1 - step``.

    ``ceil((image - patch) / (patch * step)) + 1`` evenly spaced windows, the first at 0 and the last at
    ``image - patch``. When the image is not larger than the patch there is one window at 0 (the caller pads).
    """
    image_size, patch = int(image_size), int(patch)
    if patch < 1 or not 0 < step <= 1:
        raise ValueError(f"invalid patch {patch} or step {step}")
    if image_size <= patch:
        return [0]
    n = int(math.ceil((image_size - patch) / (patch * step))) + 1
    span = image_size - patch
    return [int(round(i * span / (n - 1))) for i in range(n)]


def mirror_axes_for(ndim: int) -> tuple[int, ...]:
    """All spatial axes of a ``ndim``-dimensional patch: ``(0, 1)`` for 2D, ``(0, 1, 2)`` for 3D."""
    if ndim not in (2, 3):
        raise ValueError(f"patches are 2D or 3D, not {ndim}D")
    return tuple(range(ndim))


def _mirror_combinations(mirror_axes: Sequence[int] | None, ndim: int) -> list[tuple[int, ...]]:
    """Tensor dims (batch and channel first) to flip, one tuple per combination; ``()`` is the identity."""
    if not mirror_axes:
        return [()]
    axes = sorted({int(a) for a in mirror_axes})
    if any(a < 0 or a >= ndim for a in axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} out of range for a {ndim}D patch")
    dims = [a + 2 for a in axes]
    return [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]


def _logits(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):  # deep supervision left on: full resolution comes first
        out = out[0]
    return out


def _softmax_(logits: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 in float32, in place in ``logits`` when they are float32 and the network's own output
    (not its input handed back), so that a batch needs no second class-sized buffer."""
    if logits.dtype != torch.float32 or logits.untyped_storage().data_ptr() == inp.untyped_storage().data_ptr():
        return torch.softmax(logits, dim=1, dtype=torch.float32)
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


def _sigmoid_(logits: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Sigmoid in float32 (region-based networks: one independent probability per region), in place when
    :func:`_softmax_` would be."""
    if logits.dtype != torch.float32 or logits.untyped_storage().data_ptr() == inp.untyped_storage().data_ptr():
        return torch.sigmoid(logits.float())
    return logits.sigmoid_()


def _entropy_accumulator(entropy_out: torch.Tensor | None, spatial: tuple[int, ...], device: torch.device
                         ) -> torch.Tensor | None:
    """Where the members' weighted entropies are summed: ``entropy_out`` itself (zeroed) when it is on
    ``device``, else a zeroed volume there (copied into ``entropy_out`` at the end); None when not asked for."""
    if entropy_out is None:
        return None
    if tuple(entropy_out.shape) != spatial or entropy_out.dtype != torch.float32:
        raise ValueError(f"entropy_out must be float32 of the case's shape {spatial}, got "
                         f"{entropy_out.dtype} {tuple(entropy_out.shape)}")
    if entropy_out.device == device:
        return entropy_out.zero_()
    return torch.zeros(spatial, dtype=torch.float32, device=device)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _window_regions(padded: Sequence[int], patch: Sequence[int], before: Sequence[int], size: Sequence[int],
                    step: float) -> list[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """Per window over the (padded) sliding axes: its slices into the padded input, the part of it that lies
    inside the unpadded case (slices into the result) and the same part as slices into the patch."""
    starts = [window_starts(s, p, step) for s, p in zip(padded, patch)]
    out = []
    for corner in itertools.product(*starts):
        src, dst, inner = [], [], []
        for st, p, b, n in zip(corner, patch, before, size):
            lo, hi = max(st - b, 0), min(st + p - b, n)
            src.append(slice(st, st + p))
            dst.append(slice(lo, hi))
            inner.append(slice(lo + b - st, hi + b - st))
        out.append((tuple(src), tuple(dst), tuple(inner)))
    return out


def predict_sliding_window(network: torch.nn.Module | Sequence[torch.nn.Module], data: np.ndarray | torch.Tensor,
                           patch_size: Sequence[int], n_classes: int, mirror_axes: Sequence[int] | None = None,
                           batch_size: int = 2, device: torch.device | str = "cpu", step: float = 0.5,
                           use_gaussian: bool = True, amp: bool = False, progress: bool = False,
                           amp_dtype: torch.dtype | None = None, sigmoid: bool = False,
                           entropy_out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax probabilities ``(n_classes, Z, Y, X)`` (float32, CPU) of a case ``data`` ``(c, Z, Y, X)``; with
    ``sigmoid`` (region-based networks) the sigmoid of each output channel instead, ``(n_regions, Z, Y, X)``.

    ``patch_size`` has 3 entries (3D network, windows over Z, Y, X) or 2 (2D network applied to every slice
    along Z, windows over Y, X). Axes smaller than the patch are zero-padded (centred) and the padding is
    cropped off the result. ``mirror_axes`` are spatial axes of the patch (``(0, 1, 2)`` / ``(0, 1)``);
    the softmax of all ``2^k`` mirrorings is averaged. ``network`` may be several networks (a configuration's
    folds): their softmax is averaged too. ``batch_size`` windows go through the network at once.

    Memory: the result is the only array of all classes at the case's size (float32): each window's softmax is
    weighted and added into it in place, the padding never enters it, and it is divided by the accumulated
    weights in place at the end; mirrorings and networks are summed per batch of windows.

    ``entropy_out``: a float32 CPU tensor ``(Z, Y, X)`` that receives the expected entropy ``E_m H[p_m]`` over
    the members (every mirroring of every network; :mod:`segpipe.inference.uncertainty`), each member's entropy
    weighted and accumulated like its probabilities: one more volume of the case's size, no per-member array.
    """
    device = torch.device(device)
    networks: list[torch.nn.Module] = [network] if isinstance(network, torch.nn.Module) else list(network)
    if not networks:
        raise ValueError("no network to predict with")
    patch = tuple(int(p) for p in patch_size)
    pdim = len(patch)
    if pdim not in (2, 3):
        raise ValueError(f"patch size must have 2 or 3 entries, got {patch_size}")
    x = torch.as_tensor(data)
    if x.ndim != 4:
        raise ValueError(f"data must be (c, Z, Y, X), got shape {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.float32)  # no copy when already float32 on the device
    batch_size = max(1, int(batch_size))
    flips = _mirror_combinations(mirror_axes, pdim)

    # zero-pad the axes the windows slide over up to the patch size (centred)
    spatial = tuple(int(s) for s in x.shape[1:])
    slide = spatial[-pdim:]
    pads = [max(0, p - s) for p, s in zip(patch, slide)]
    before = [p // 2 for p in pads]
    if any(pads):
        pad_arg: list[int] = []
        for b, p in zip(reversed(before), reversed(pads)):  # F.pad wants the last axis first
            pad_arg += [b, p - b]
        x = F.pad(x, pad_arg, mode="constant", value=0.0)
    slide_p = tuple(int(s) for s in x.shape[1:])[-pdim:]

    regions = _window_regions(slide_p, patch, before, slide, step)
    windows: list[tuple[tuple[int | slice, ...], tuple[int | slice, ...], tuple[slice, ...]]]
    if pdim == 3:
        windows = list(regions)  # index into (Z, Y, X)
    else:  # index into (Z, Y, X): one window per slice and in-plane position
        windows = [((z,) + src, (z,) + dst, inner) for z in range(spatial[0]) for src, dst, inner in regions]

    weight_patch = (torch.from_numpy(gaussian_importance_map(patch)) if use_gaussian
                    else torch.ones(patch)).to(device)
    # the weights are the same for every slice in 2D: accumulate them over the sliding axes only
    weights = torch.zeros(slide, dtype=torch.float32, device=device)
    for _, dst, inner in regions:
        weights[dst] += weight_patch[inner]
    acc = torch.zeros((n_classes,) + spatial, dtype=torch.float32, device=device)
    ent_acc = _entropy_accumulator(entropy_out, spatial, device)

    for net in networks:
        net.to(device)
        net.eval()
    autocast = (torch.autocast(device.type, dtype=amp_dtype, enabled=True) if amp else contextlib.nullcontext())
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(windows), desc="sliding window", unit="win", leave=False)
        except ImportError:  # pragma: no cover
            bar = None
    n_pred = len(flips) * len(networks)
    window_weight = weight_patch * (1.0 / n_pred) if n_pred > 1 else weight_patch
    with torch.inference_mode():
        for chunk in _chunks(windows, batch_size):
            batch = torch.stack([x[(slice(None),) + src] for src, _, _ in chunk])  # (B, c, *patch)
            probs: torch.Tensor | None = None
            ents: torch.Tensor | None = None  # the members' summed entropies, (B, *patch)
            for net in networks:
                for dims in flips:
                    inp = torch.flip(batch, dims) if dims else batch
                    with autocast:
                        logits = _logits(net, inp)
                    if logits.shape[1] != n_classes or tuple(logits.shape[2:]) != patch:
                        raise ValueError(f"network returned {tuple(logits.shape)}, expected "
                                         f"(B, {n_classes}, {', '.join(map(str, patch))})")
                    prob = _sigmoid_(logits, inp) if sigmoid else _softmax_(logits, inp)
                    del logits
                    if dims:
                        prob = torch.flip(prob, dims)
                    if ent_acc is not None:  # before ``prob`` is summed into (or becomes) ``probs``
                        ent = entropy(prob, dim=1, binary=sigmoid)
                        ents = ent if ents is None else ents.add_(ent)
                    probs = prob if probs is None else probs.add_(prob)
            if probs is None:  # unreachable: flips always holds the identity ()
                raise ValueError("no mirroring combination to predict with")
            probs.mul_(window_weight)
            for (_, dst, inner), prob in zip(chunk, probs):
                acc[(slice(None),) + dst] += prob[(slice(None),) + inner]
            del probs
            if ent_acc is not None and ents is not None:
                ents.mul_(window_weight)
                for (_, dst, inner), ent in zip(chunk, ents):
                    ent_acc[dst] += ent[inner]
                del ents
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()

    acc /= weights  # in place; broadcasts over classes (and slices in 2D)
    if ent_acc is not None and entropy_out is not None:
        ent_acc /= weights
        if ent_acc is not entropy_out:
            entropy_out.copy_(ent_acc)
    return acc.cpu() if acc.device.type != "cpu" else acc
