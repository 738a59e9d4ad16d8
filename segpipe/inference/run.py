"""``segpipe predict``: choose the models (configurations, folds, post-processing) and predict a folder."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe.dataset.onboard import load_dataset
from segpipe.errors import fail
from segpipe.inference.predict import load_model, predict_folder
from segpipe.io.jsonio import read_json
from segpipe.planning.run import get_configuration
from segpipe.devices import autocast_dtype, pick_device
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def trained_folds(ws: Workspace, config: str, checkpoint: str = "final") -> list[str]:
    root = ws.dir / "results" / config
    if not root.is_dir():
        return []
    return sorted(p.name[len("fold_"):] for p in root.glob("fold_*") if (p / f"checkpoint_{checkpoint}.pt").is_file())


def run_predict(ws: Workspace, input_dir: Path, output_dir: Path, configs: list[str] | None = None,
                folds: list[str] | None = None, best: bool = False, mirror: bool = True,
                save_probabilities: bool = False, checkpoint: str = "final", device: str = "auto",
                workers: int = 1, pixel_spacing: float | None = None,
                precision: str = "auto") -> tuple[list[str], str]:
    spec = load_dataset(ws)
    plans = read_json(ws.plans_json, kind="plans")
    postprocess = None
    if best:
        from segpipe.evaluation.selection import selection_path

        sel = read_json(selection_path(ws), kind="selection")
        configs, folds = sel["configs"], [str(f) for f in sel["folds"]]
        postprocess = sel["postprocessing"]
    if not configs:
        configs = ["3d_fullres" if "3d_fullres" in plans["configurations"] else "2d"]
    dev = pick_device(device)
    models = []
    for c in configs:
        cfg = get_configuration(plans, c, ws.plans_json)
        fs = [str(f) for f in folds] if folds else trained_folds(ws, c, checkpoint)
        if not fs:
            raise fail(f"no trained fold of {c}", f"run `segpipe train --config {c} --fold 0` (or --fold each)",
                       file=ws.dir / "results" / c)
        models.append(load_model(ws.dir / "results", c, cfg, fs, spec.n_channels,
                                 spec.n_classes, dev, checkpoint))
    desc = " + ".join(f"{m.config_name} (folds {', '.join(str(f) for f in (folds or trained_folds(ws, m.config_name, checkpoint)))})"
                      for m in models)
    if postprocess and (postprocess.get("foreground") or postprocess.get("classes")):
        desc += f", post-processing {postprocess}"
    written = predict_folder(spec, models, input_dir, output_dir, dev, mirror=mirror,
                             save_probabilities=save_probabilities, postprocess=postprocess, workers=workers,
                             pixel_spacing=pixel_spacing, amp_dtype=autocast_dtype(dev, precision))
    return written, desc
