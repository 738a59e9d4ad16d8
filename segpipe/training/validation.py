"""The final validation of a fold: full-volume sliding-window prediction of each held-out case, exported
to its original geometry (``validation/<case><ending>``), and Dice per case and class in ``summary.json``."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.reading import read_label
from segpipe.evaluation.metrics import overlap_metrics
from segpipe.inference.export import export_label_map
from segpipe.inference.sliding_window import mirror_axes_for, predict_sliding_window
from segpipe.io.jsonio import write_json
from segpipe.preprocessing.store import load_case
from segpipe.progress import CaseProgress

log = logging.getLogger(__name__)


def summarize_cases(per_case: dict[str, dict[str, dict]], labels: dict[str, int]) -> dict:
    """Mean of each metric per class over cases (NaNs skipped) and the mean foreground Dice."""
    fg = {n: v for n, v in labels.items() if v > 0}
    mean: dict[str, dict] = {}
    for name in fg:
        vals = [c[name]["dice"] for c in per_case.values() if not np.isnan(c[name]["dice"])]
        mean[name] = {"dice": float(np.mean(vals)) if vals else float("nan"), "n": len(vals)}
    dices = [m["dice"] for m in mean.values() if not np.isnan(m["dice"])]
    return {"mean": mean, "foreground_mean_dice": float(np.mean(dices)) if dices else float("nan")}


def validate_fold(network: torch.nn.Module, config: dict, spec: DatasetSpec, raw_root: Path, preprocessed: Path,
                  val_ids: list[str], out_dir: Path, device: torch.device, mirror: bool = True,
                  amp_dtype: torch.dtype | None = None, deadline: float | None = None) -> dict:
    """Predict, export and score each validation case; writes ``out_dir/summary.json`` and returns it.

    With a ``deadline`` (``time.monotonic()`` value; a training budget's end), mirroring is dropped for the
    remaining cases as soon as the cases so far say that it would not fit.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    network.deep_supervision = False
    network.eval()
    patch = config["patch_size"]
    labels = spec.labels
    per_case: dict[str, dict] = {}
    mirrored: dict[str, bool] = {}
    t0 = time.monotonic()
    bar = CaseProgress(len(val_ids), "validation")
    for i, cid in enumerate(val_ids):
        if deadline is not None and mirror and i > 0:
            per = (time.monotonic() - t0) / i
            if time.monotonic() + per * (len(val_ids) - i) > deadline:
                mirror = False
                log.warning("validation: mirroring turned off for the remaining %d case(s) to stay within the "
                            "budget", len(val_ids) - i)
        mirrored[cid] = mirror
        data, _, props = load_case(preprocessed, cid)
        probs = predict_sliding_window(network, data, patch, spec.n_classes,
                                       mirror_axes=mirror_axes_for(len(patch)) if mirror else None,
                                       batch_size=max(1, int(config["batch_size"])), device=device,
                                       amp=amp_dtype is not None, amp_dtype=amp_dtype)
        pred = export_label_map(probs, props, out_dir / f"{cid}{spec.file_ending}", save_probabilities=True)
        ref, geo = read_label(spec, raw_root, spec.case(cid))
        vox = float(np.prod(geo.spacing))
        per_case[cid] = {name: overlap_metrics(pred, np.rint(ref).astype(np.int16), value, vox)
                         for name, value in labels.items() if value > 0}
        bar.update(cid)
    bar.close()
    summary = {"cases": per_case, **summarize_cases(per_case, labels),
               "mirroring": all(mirrored.values()) if mirrored else mirror, "mirrored_cases": mirrored}
    write_json(out_dir / "summary.json", summary, kind="validation_summary")
    network.deep_supervision = True
    return summary
