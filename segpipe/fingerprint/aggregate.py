"""Dataset-level fingerprint from per-case fingerprints."""
from __future__ import annotations

from collections import Counter

import numpy as np

INTENSITY_PERCENTILES = (0.5, 99.5)


def intensity_stats(values: np.ndarray) -> dict:
    """Foreground intensity statistics of one channel (mean, std, median, min, max, 0.5/99.5 percentiles)."""
    if values.size == 0:
        return {"n_samples": 0, "mean": None, "std": None, "median": None, "min": None, "max": None,
                "percentile_00_5": None, "percentile_99_5": None}
    v = values.astype(np.float64)
    lo, hi = np.percentile(v, INTENSITY_PERCENTILES)
    return {"n_samples": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max()), "percentile_00_5": float(lo), "percentile_99_5": float(hi)}


def aggregate(cases: dict[str, dict], channel_samples: list[list[np.ndarray]], channels: dict[str, str]) -> dict:
    """Combine per-case fingerprints (without samples) and the per-channel samples into fingerprint.json content.

    Lists in ``spacings``/``shapes_after_crop`` follow the case order of ``cases`` (array axis order per entry).
    """
    ids = list(cases)
    orient = Counter(c["orientation"] for c in cases.values())
    return {
        "n_cases": len(ids),
        "ndim": len(cases[ids[0]]["shape"]) if ids else None,
        "case_ids": ids,
        "spacings": [cases[i]["spacing"] for i in ids],
        "shapes_after_crop": [cases[i]["shape_after_crop"] for i in ids],
        "median_spacing": np.median([cases[i]["spacing"] for i in ids], axis=0).tolist(),
        "median_shape_after_crop": np.median([cases[i]["shape_after_crop"] for i in ids], axis=0).tolist(),
        "median_relative_size_after_crop": float(np.median([cases[i]["relative_size_after_crop"] for i in ids])),
        "orientations": dict(orient),
        "intensity": {k: {"name": name, **intensity_stats(np.concatenate(channel_samples[int(k)])
                                                           if channel_samples[int(k)] else np.zeros(0))}
                      for k, name in channels.items()},
        "cases": cases,
    }
