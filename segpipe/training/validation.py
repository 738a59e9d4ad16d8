"""The final validation of a fold: full-volume sliding-window prediction of each held-out case, exported
to its original geometry (``validation/<case><ending>``), and overlap metrics (Dice, IoU, precision, recall,
voxel counts, volumes in mm^3) per case and class in ``summary.json``, summarized over the cases by
:func:`segpipe.evaluation.summary.summarize` (each mean with the number of cases it is over)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.reading import read_label
from segpipe.errors import error_context
from segpipe.evaluation.metrics import case_metrics
from segpipe.evaluation.summary import OVERLAP_METRICS, summarize
from segpipe.inference.export import export_label_map
from segpipe.inference.sliding_window import mirror_axes_for, predict_sliding_window
from segpipe.io.jsonio import write_json
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.cascade import one_hot_channels
from segpipe.preprocessing.store import load_case, load_previous_stage
from segpipe.progress import CaseProgress
from segpipe.training.data import CascadeInput

log = logging.getLogger(__name__)


def _set_deep_supervision(network: torch.nn.Module, enabled: bool) -> None:
    # torch annotates Module.__setattr__ as taking tensors and modules only; plain attributes are fine at runtime
    network.deep_supervision = enabled  # type: ignore[assignment]


def validate_fold(network: torch.nn.Module, config: Configuration, spec: DatasetSpec, raw_root: Path,
                  preprocessed: Path, val_ids: list[str], out_dir: Path, device: torch.device, mirror: bool = True,
                  amp_dtype: torch.dtype | None = None, deadline: float | None = None,
                  cascade: CascadeInput | None = None) -> dict:
    """Predict, export and score each validation case; writes ``out_dir/summary.json`` and returns it.

    With a ``deadline`` (``time.monotonic()`` value; a training budget's end), mirroring is dropped for the
    remaining cases as soon as the cases so far say that it would not fit.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _set_deep_supervision(network, False)
    network.eval()
    patch = list(config.patch_size)
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
        with error_context("validation", cid):
            data, _, props = load_case(preprocessed, cid)
            if cascade is not None:  # the previous stage's segmentation as one-hot input channels
                prev = one_hot_channels(load_previous_stage(cascade.folder, cid)[0], cascade.foreground)
                data = np.concatenate([data, prev])
            probs = predict_sliding_window(network, data, patch, spec.n_outputs,
                                           mirror_axes=mirror_axes_for(len(patch)) if mirror else None,
                                           batch_size=config.batch_size, device=device,
                                           amp=amp_dtype is not None, amp_dtype=amp_dtype,
                                           sigmoid=spec.regions is not None)
            pred = export_label_map(probs, props, out_dir / f"{cid}{spec.file_ending}", save_probabilities=True,
                                    resampling=config.resampling, region_order=spec.region_order)
            ref, geo = read_label(spec, raw_root, spec.case(cid))
            per_case[cid] = case_metrics(pred, np.rint(ref).astype(np.int16), spec.classes, geo.spacing,
                                         surface=False)
        bar.update(cid)
    bar.close()
    summary = {"cases": per_case, **summarize(per_case, labels, OVERLAP_METRICS),
               "mirroring": all(mirrored.values()) if mirrored else mirror, "mirrored_cases": mirrored}
    write_json(out_dir / "summary.json", summary, kind="validation_summary")
    _set_deep_supervision(network, True)
    return summary
