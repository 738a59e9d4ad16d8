"""``segpipe predict``: raw images in, label maps in the images' own geometry out.

Each input case is read like onboarding reads images, preprocessed exactly as in training, predicted by every
requested fold (sliding window, Gaussian weighting, optional mirroring), the softmax averaged over folds (and
over configurations for an ensemble), resampled back and un-cropped into the original geometry, optionally
post-processed, and written as ``<case><ending>`` (plus ``<case>.npz`` probabilities on request). Cases are
preprocessed and exported in worker processes while the network predicts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.reading import read_channels
from segpipe.errors import Problem, fail, failure_problems
from segpipe.inference.export import probabilities_to_original, write_prediction
from segpipe.inference.inputs import discover_inputs, resolve_inputs  # noqa: F401 - discover_inputs re-exported
from segpipe.inference.sliding_window import mirror_axes_for, predict_sliding_window
from segpipe.io.atomic import remove_stale_temporaries
from segpipe.io.images import GeometryDict, file_ending
from segpipe.networks import build_network
from segpipe.parallel import CasePool, CaseTask, case_failures_error
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.case import preprocess_case
from segpipe.progress import CaseProgress
from segpipe.training.checkpoint import check_compatible, load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Model:
    """The networks of one configuration (one per fold) and its plan entry."""

    config: Configuration
    networks: list[torch.nn.Module]

    @property
    def config_name(self) -> str:
        return self.config.name


def load_model(results_root: Path, config: Configuration, folds: list[str], n_channels: int,
               n_classes: int, device: torch.device, checkpoint: str = "final") -> Model:
    """The networks of ``config``'s ``folds`` from ``results_root/fold_<k>/checkpoint_<checkpoint>.pt``
    (``results_root``: :meth:`Workspace.results_root`), checked against the plan's network before their weights
    are loaded."""
    nets = []
    for fold in folds:
        path = Path(results_root) / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
        state = load_checkpoint(path, map_location="cpu")
        check_compatible(state, config.network, path)
        if state.get("n_channels", n_channels) != n_channels:
            raise fail(f"checkpoint expects {state['n_channels']} channels, the data set has {n_channels}",
                       "use the workspace the model was trained in", file=path)
        net = build_network(config.network, n_channels, n_classes, deep_supervision=False)
        net.load_state_dict(state["network"])
        nets.append(net.to(device).eval())
    return Model(config, nets)


def _prepare(args) -> tuple[str, list[tuple[np.ndarray, dict]], GeometryDict]:
    """Worker: read one input case and preprocess it for each configuration."""
    spec, root, case, configs = args
    data, geo = read_channels(spec, root, case)
    if data.shape[0] != spec.n_channels:
        raise fail(f"image has {data.shape[0]} channel(s), the model expects {spec.n_channels}",
                   "give the same channels as in training", file=root / case.images[0], case=case.id)
    out = []
    for cfg in configs:
        pdata, _, props = preprocess_case(data, None, geo, cfg, case_id=case.id,
                                          file=str(root / case.images[0]))
        out.append((pdata, props))
    return case.id, out, geo.as_in_file().to_dict()  # written as the input's header has it


def _export(args) -> str:
    """Worker: average probabilities already in original geometry, post-process, write."""
    probs_list, geo, out_path, postprocess, save_probs, labels = args
    probs = np.mean(probs_list, axis=0) if len(probs_list) > 1 else probs_list[0]
    write_prediction(probs, geo, out_path, save_probs, postprocess, labels)
    return str(out_path)


def _case_of(task: CaseTask) -> str:
    if task.case is None:  # every task of predict_folder is submitted with its case id
        raise ValueError("predict: a task without a case id")
    return task.case


def predict_folder(spec: DatasetSpec, models: list[Model], input_dir: Path, output_dir: Path, device: torch.device,
                   mirror: bool = True, save_probabilities: bool = False, postprocess: dict | None = None,
                   workers: int = 1, batch_size: int | None = None, pixel_spacing: float | None = None,
                   amp_dtype: torch.dtype | None = None, spacing_csv: Path | None = None) -> list[str]:
    """Predict every case of ``input_dir`` into ``output_dir`` (never into ``input_dir``)."""
    input_dir, output_dir = Path(input_dir).absolute(), Path(output_dir).absolute()
    if output_dir == input_dir:
        raise fail("output folder is the input folder", "write predictions to another folder", file=output_dir)
    cases = resolve_inputs(input_dir, spec, pixel_spacing, spacing_csv)
    in_spec = DatasetSpec(spec.name, str(input_dir), spec.format, spec.channels, spec.labels, spec.file_ending,
                          cases, channels_in_file=spec.channels_in_file, allow_external_links=True)
    configs = [m.config for m in models]
    ending = file_ending(cases[0].images[0]) or spec.file_ending
    remove_stale_temporaries(output_dir)  # left by a killed earlier run (a live run's are kept)
    written: list[str] = []
    failures: dict[str, list[Problem]] = {}
    ahead = max(2, workers + 1)  # cases read and preprocessed ahead of the network
    with CasePool(workers, "predict") as pool, CaseProgress(len(cases), "predict") as bar:
        preparing: list[CaseTask] = []
        exporting: list[CaseTask] = []
        queue = iter(cases)

        def finish_exports(keep: int) -> None:
            while len(exporting) > keep:
                task = exporting.pop(0)
                ok, value = pool.outcome(task)
                if ok:
                    written.append(value)
                else:
                    failures[_case_of(task)] = value
                bar.update(task.case, failed=not ok)

        while True:
            while len(preparing) < ahead and (case := next(queue, None)) is not None:
                preparing.append(pool.submit(_prepare, (in_spec, input_dir, case, configs), case.id))
            if not preparing:
                break
            task = preparing.pop(0)
            ok, value = pool.outcome(task)
            if not ok:
                failures[_case_of(task)] = value
                bar.update(task.case, failed=True)
                continue
            cid, prepared, geo = value
            try:
                originals = [_predict_model(model, pdata, props, len(spec.labels), mirror, device, batch_size,
                                            amp_dtype) for model, (pdata, props) in zip(models, prepared)]
            except Exception as e:  # noqa: BLE001 - reported with this case; the other cases go on
                failures[cid] = failure_problems(e, "predict", cid)
                bar.update(cid, failed=True)
                continue
            out_path = output_dir / f"{cid}{ending}"
            exporting.append(pool.submit(_export, (originals, geo, out_path, postprocess, save_probabilities,
                                                   spec.labels), cid))
            del originals, prepared, value
            finish_exports(keep=max(0, workers - 1))
        finish_exports(keep=0)
    if failures:
        raise case_failures_error(failures, len(cases), "predict")
    return written


def _predict_model(model: Model, pdata: np.ndarray, props: dict, n_classes: int, mirror: bool,
                   device: torch.device, batch_size: int | None, amp_dtype: torch.dtype | None) -> np.ndarray:
    """Fold-averaged probabilities of one configuration for one preprocessed case, in the raw geometry
    ``(n_classes, *raw_shape)``."""
    cfg = model.config
    mirror_axes = mirror_axes_for(cfg.ndim) if mirror else None
    probs: torch.Tensor | None = None
    for net in model.networks:
        p = predict_sliding_window(net, pdata, list(cfg.patch_size), n_classes, mirror_axes,
                                   batch_size=batch_size or cfg.batch_size,
                                   device=device, amp=amp_dtype is not None, amp_dtype=amp_dtype)
        probs = p if probs is None else probs + p
    if probs is None:
        raise ValueError(f"configuration {cfg.name}: no trained network to predict with")
    return probabilities_to_original(probs / len(model.networks), props)
