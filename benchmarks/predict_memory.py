"""Peak memory and time per phase of segpipe's per-case prediction path on a large synthetic CT (issue 12).

Builds a 512x512x300 float32 CT-like case (spacing 2.5 x 0.98 x 0.98 mm, (z, y, x)), a configuration at
3.0 x 1.5 x 1.5 mm (so preprocessing resamples) with a tiny random-weight U-Net and 12 classes, and runs one
case through predict's path in this process: preprocess in memory, sliding window, export to the original
geometry, write the label map (and ``--save-probabilities``). Prints peak RSS (VmHWM of /proc/self/status,
reset per phase through /proc/self/clear_refs where the kernel allows it) and wall time per phase.

    .venv/bin/python benchmarks/predict_memory.py [--save-probabilities] [--compare-old] [--classes 12]

``--compare-old`` also runs the export as it was before issue 12 (scipy, all classes at once) after the new one in
the same process, for an A/B comparison of time (on a shared machine only timings within one run compare) and
peak RSS, and reports their argmax agreement. Result on a 2-core machine, 12 classes (peak RSS of the export
phase; the process held ~1.35 GB before it): new 1.9 GB, old 9.4 GB; 3 of 78.6 M voxels differ.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segpipe.io.images import Geometry
from segpipe.networks import build_network
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.case import preprocess_case


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB) since the start or the last :func:`reset_peak`."""
    kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Phases:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.can_reset = reset_peak()

    def run(self, name: str, fn, *args, **kwargs):
        reset_peak()
        start_rss = rss_mb()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        row = {"phase": name, "seconds": round(time.perf_counter() - t0, 2), "rss_before_mb": round(start_rss),
               "peak_rss_mb": round(peak_rss_mb()), "rss_after_mb": round(rss_mb())}
        self.rows.append(row)
        print(f"  {name:<22} {row['seconds']:>8.2f} s   peak RSS {row['peak_rss_mb']:>7} MiB "
              f"(before {row['rss_before_mb']}, after {row['rss_after_mb']})", flush=True)
        return out


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A CT-like volume (HU): a body ellipse of soft tissue with a few organ-like blobs and noise, 0 outside the
    body (so that preprocessing crops), float32 ``(1, z, y, x)``."""
    z, y, x = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - y / 2) / (0.40 * y)) ** 2 + ((xx - x / 2) / (0.46 * x)) ** 2 < 1
    out = np.zeros((1, z, y, x), np.float32)
    slab = np.where(body, np.float32(40), np.float32(0)).astype(np.float32)
    for k in range(z):
        out[0, k] = slab
    for i in range(6):  # organ-like ellipsoids
        c = rng.uniform([0.2 * z, 0.35 * y, 0.35 * x], [0.8 * z, 0.65 * y, 0.65 * x])
        r = rng.uniform([0.08 * z, 0.05 * y, 0.05 * x], [0.2 * z, 0.12 * y, 0.12 * x])
        zz = np.arange(z)[:, None, None]
        blob = ((zz - c[0]) / r[0]) ** 2 + ((yy[None] - c[1]) / r[1]) ** 2 + ((xx[None] - c[2]) / r[2]) ** 2 < 1
        out[0][blob] = np.float32(60 + 40 * i)
    noise = rng.standard_normal((y, x), dtype=np.float32) * 15
    for k in range(z):  # one noise image, shifted per slice (fast, not constant along z)
        out[0, k] += np.where(body, np.roll(noise, k, axis=k % 2), 0)
    return out


def old_export(probs: torch.Tensor, props: dict, geometry: dict, out: Path, save_probabilities: bool) -> np.ndarray:
    """segpipe's export before issue 12, for an A/B comparison in the same run: scipy resampling of all classes
    at once, renormalised, pasted into a float32 array of the raw shape, argmax, probabilities as float16."""
    from segpipe.inference.export import probabilities_path
    from segpipe.io.atomic import atomic_save_npz
    from segpipe.io.images import write_image
    from segpipe.preprocessing.resampling import resample_image

    arr = probs.numpy()
    res = resample_image(arr, props["target_spacing"], props["spacing"], shape=props["shape_after_crop"], order=1)
    total = res.sum(axis=0, keepdims=True)
    np.maximum(total, np.float32(1e-8), out=total)
    res /= total
    full = np.zeros((arr.shape[0],) + tuple(props["shape_before_crop"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None),) + tuple(slice(a, b) for a, b in props["crop_bbox"])] = res
    del res, total
    seg = np.argmax(full, axis=0).astype(np.uint8)
    write_image(seg, Geometry.from_dict(geometry), out)
    if save_probabilities:
        atomic_save_npz(probabilities_path(out), probabilities=full.astype(np.float16))
    return seg


def tiny_configuration(n_classes: int, patch: tuple[int, int, int]) -> Configuration:
    doc = {"spacing": [3.0, 1.5, 1.5], "median_shape": [250, 335, 335], "patch_size": list(patch), "batch_size": 2,
           "batch_dice": False, "data_identifier": "3d_fullres", "trainer": "default",
           "network": {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16],
                       "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                       "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]},
           "normalization": [{"channel": "CT", "scheme": "ct", "clip": [-100.0, 300.0], "mean": 60.0, "std": 50.0,
                              "use_mask": False}],
           "resampling": {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
                          "coarse_axis_order": 0},
           "memory": {}, "why": {}}
    return Configuration.from_json("3d_fullres", doc)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="(z, y, x) voxels")
    ap.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.98, 0.98], help="(z, y, x) mm")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--mirror", action="store_true", help="mirror over all axes (8x the network time)")
    ap.add_argument("--save-probabilities", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-old", action="store_true",
                    help="also run the export as it was before issue 12 (after the new one, in this process) and "
                    "report its time, peak RSS and the argmax agreement")
    ap.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    from segpipe.inference.predict import Model, export_case, predict_case

    shape = tuple(a.shape)
    cfg = tiny_configuration(a.classes, tuple(a.patch))
    net = build_network(cfg.network, 1, a.classes, deep_supervision=False).eval()
    model = Model(cfg, [net])
    geo = Geometry(shape, tuple(a.spacing), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    ph = Phases()
    print(f"case {shape} spacing {a.spacing} -> {list(cfg.spacing)}, {a.classes} classes, patch {a.patch}, "
          f"one float32 probability array at the raw shape: {a.classes * np.prod(shape) * 4 / 2**20:.0f} MiB"
          + ("" if ph.can_reset else " (peak RSS cannot be reset per phase here: peaks are cumulative)"), flush=True)
    t_all = time.perf_counter()
    data = ph.run("synthesize", synthetic_ct, shape)
    pdata, _, props = ph.run("preprocess", preprocess_case, data, None, geo, cfg, case_id="ct")
    del data
    print(f"  preprocessed shape {list(pdata.shape[1:])}: one float32 probability array there is "
          f"{a.classes * np.prod(pdata.shape[1:]) * 4 / 2**20:.0f} MiB", flush=True)
    probs = ph.run("sliding window", predict_case, model, pdata, a.classes, a.mirror, torch.device("cpu"))
    del pdata
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.out or Path(tmp)
        out = out_dir / "ct.nii.gz"
        seg = ph.run("export + write", export_case, [(probs, props)], geo.to_dict(), out,
                     save_probabilities=a.save_probabilities)
        sizes = {p.name: p.stat().st_size for p in out_dir.iterdir() if p.name.startswith("ct.")}
        total = time.perf_counter() - t_all
        extra: dict = {}
        if a.compare_old:
            old = ph.run("old export + write", old_export, probs, props, geo.to_dict(), out_dir / "old.nii.gz",
                         a.save_probabilities)
            extra["argmax_agreement_vs_old"] = float(np.mean(old == seg))
            extra["voxels_differing_from_old"] = int(np.count_nonzero(old != seg))
            if a.save_probabilities:
                from segpipe.inference.export import probabilities_path
                with np.load(probabilities_path(out)) as f_new, np.load(probabilities_path(out_dir / "old.nii.gz")) as f_old:
                    pn, po = f_new["probabilities"], f_old["probabilities"]
                    extra["saved_probabilities_max_abs_diff"] = max(
                        float(np.abs(pn[c].astype(np.float32) - po[c].astype(np.float32)).max())
                        for c in range(pn.shape[0]))
                    extra["saved_probabilities"] = f"{pn.dtype} {list(pn.shape)}"
                sizes["old.npz"] = probabilities_path(out_dir / "old.nii.gz").stat().st_size
    result = {"shape": list(shape), "classes": a.classes, "save_probabilities": a.save_probabilities,
              "phases": ph.rows, "total_seconds": round(total, 1),
              "peak_rss_mb": max(r["peak_rss_mb"] for r in ph.rows),
              "label_counts": np.bincount(seg.ravel(), minlength=a.classes).tolist(), "file_bytes": sizes, **extra}
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
