"""Intensity normalization per channel, as the plan says (``plans.json``: a configuration's "normalization").

Schemes are looked up by name in :data:`NORMALIZERS`; add one with ``@register("name")``. A scheme is a function
``(channel: np.ndarray (spatial, (z, y, x)), entry: ChannelNormalization, mask: np.ndarray bool (spatial))
-> np.ndarray float32`` where ``entry`` is the channel's plan entry
(:class:`~segpipe.planning.plans.ChannelNormalization`: ``scheme``, ``use_mask``, ``clip``, ``mean``, ``std``,
and ``extra`` for a plug-in scheme's own keys).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from segpipe import plugins
from segpipe.errors import fail
from segpipe.planning.plans import ChannelNormalization

STD_FLOOR = 1e-8

Normalizer = Callable[[np.ndarray, ChannelNormalization, np.ndarray], np.ndarray]
NORMALIZERS: dict[str, Normalizer] = {}


register: plugins.Registrar[Normalizer] = plugins.Registrar("normalizer")
"""Decorator: ``@register(name)`` makes ``fn`` the normalization scheme called ``name``."""


@register("zscore")
def zscore(x: np.ndarray, entry: ChannelNormalization, mask: np.ndarray) -> np.ndarray:
    """Per-case z-score: statistics over the nonzero mask (voxels outside become 0) with ``use_mask``, else over
    all voxels."""
    x = x.astype(np.float32, copy=False)
    if entry.use_mask and mask.any():
        vals = x[mask]
        mean, std = float(vals.mean(dtype=np.float64)), float(vals.std(dtype=np.float64))
        out = np.zeros_like(x, dtype=np.float32)
        out[mask] = (vals - mean) / max(std, STD_FLOOR)
        return out
    mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
    return ((x - mean) / max(std, STD_FLOOR)).astype(np.float32, copy=False)


@register("ct")
def ct(x: np.ndarray, entry: ChannelNormalization, mask: np.ndarray) -> np.ndarray:
    """Clip to the dataset's foreground percentiles, then z-score with the dataset's foreground mean/std."""
    if entry.clip is None or entry.mean is None or entry.std is None:
        raise fail(f"the ct normalization of channel '{entry.channel}' lacks clip, mean or std",
                   "re-run `segpipe plan --force` (the planner takes them from the fingerprint)")
    lo, hi = entry.clip
    mean, std = entry.mean, entry.std
    out = np.clip(x.astype(np.float32, copy=False), lo, hi)
    return ((out - mean) / max(std, STD_FLOOR)).astype(np.float32, copy=False)


@register("none")
def none(x: np.ndarray, entry: ChannelNormalization, mask: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=True)


def get_normalizer(name: str) -> Normalizer:
    fn: Normalizer = plugins.lookup("normalizer", name, "use one of {listed} in plans.json (or re-run `segpipe plan "
                                    "--force`), or install the plug-in that provides it", label="normalization scheme")
    return fn


def normalize(data: np.ndarray, schemes: Sequence[ChannelNormalization], nonzero_mask: np.ndarray) -> np.ndarray:
    """Normalize each channel of ``data`` ``(c, z, y, x)`` with its plan entry; returns a new float32 array."""
    if len(schemes) != data.shape[0]:
        raise fail(f"the plan has normalization for {len(schemes)} channel(s) but the case has {data.shape[0]}",
                   "re-run `segpipe plan --force` after changing the dataset's channels")
    mask = np.asarray(nonzero_mask, dtype=bool)
    if mask.shape != data.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match data shape {data.shape[1:]}")
    fns = [get_normalizer(s.scheme) for s in schemes]
    out = np.empty(data.shape, dtype=np.float32)
    for k, (fn, entry) in enumerate(zip(fns, schemes)):
        out[k] = fn(data[k], entry, mask)
    return out
