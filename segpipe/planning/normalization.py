"""Intensity normalization per channel, chosen from the channel's name and the fingerprint.

Schemes (implemented in preprocessing, looked up by name): ``ct`` clips to the foreground 0.5/99.5
percentiles then z-scores with the foreground mean/std of the whole dataset; ``zscore`` z-scores each case
with its own mean/std, inside the nonzero mask when ``use_mask`` is set.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segpipe.planning import constants as C

NORMALIZATION_SCHEMES = ("ct", "zscore", "none")


def plan_normalization(channels: Mapping[str, str], fingerprint: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    rel = fingerprint["median_relative_size_after_crop"]
    use_mask = rel < C.USE_MASK_FOR_NORM_BELOW
    out: list[dict[str, Any]] = []
    reasons: list[str] = []
    for k, name in channels.items():
        st = fingerprint["intensity"][k]
        if name.strip().upper() == "CT":
            out.append({"channel": name, "scheme": "ct", "clip": [st["percentile_00_5"], st["percentile_99_5"]],
                        "mean": st["mean"], "std": st["std"], "use_mask": False})
            reasons.append(f"'{name}': CT, clipped to the foreground 0.5/99.5 percentiles "
                           f"[{st['percentile_00_5']:.4g}, {st['percentile_99_5']:.4g}], then z-scored with the "
                           f"dataset foreground mean {st['mean']:.4g} / std {st['std']:.4g}")
        else:
            out.append({"channel": name, "scheme": "zscore", "use_mask": bool(use_mask)})
            where = (f"inside the nonzero mask, since cropping kept only {rel:.0%} of the volume" if use_mask else
                     f"over the whole crop (cropping kept {rel:.0%} of the volume)")
            reasons.append(f"'{name}': per-case z-score {where}")
    return out, "; ".join(reasons)
