"""``segpipe predict``: raw images in, label maps in the images' own geometry out.

Each input case is read like onboarding reads images, preprocessed exactly as in training, predicted by every
requested fold (sliding window, Gaussian weighting, optional mirroring), the softmax averaged over folds (and
over configurations for an ensemble), resampled back with each configuration's own plan orders
(``Configuration.resampling``) and un-cropped into the original geometry, optionally post-processed, and written
as ``<case><ending>`` (plus ``<case>.npz`` probabilities on request). Cases are preprocessed and exported in
worker processes while the network predicts. With ``uncertainty``, each case's entropy and mutual-information
maps and ``uncertainty.json`` are written too (:mod:`segpipe.inference.uncertainty`).

Memory (issue 12): the network side holds one float32 array of all classes at the configuration's spacing per
configuration (the folds and mirrorings are summed into it in place); export resamples it back class by class and
slab by slab (:func:`segpipe.inference.export.export_prediction`), never making an array of all classes at the
raw shape. An export worker gets probabilities over ``HANDOVER_BYTES`` through a temporary ``.npy`` file in the
output folder, which it memory-maps (``.tmp-<pid>-...``, deleted when the case is done, or by the next run after a
kill), instead of a pickled copy held by both processes until the export ends.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.reading import read_channels
from segpipe.errors import Problem, fail, failure_problems
from segpipe.inference.cascade import cascade_input
from segpipe.inference.export import export_prediction
from segpipe.inference.inputs import discover_inputs, input_spec, resolve_inputs  # noqa: F401 - discover_inputs re-exported
from segpipe.inference.predictors import DEFAULT_PREDICTOR, run_predictor
from segpipe.inference.sliding_window import mirror_axes_for
from segpipe.inference.uncertainty import export_uncertainty, max_entropy, write_summary
from segpipe.io.atomic import TMP_PREFIX, remove_stale_temporaries
from segpipe.io.images import GeometryDict, file_ending
from segpipe.networks import build_network
from segpipe.parallel import CasePool, CaseTask, case_failures_error
from segpipe.planning.plans import Configuration, Resampling
from segpipe.preprocessing.case import preprocess_case
from segpipe.progress import CaseProgress
from segpipe.training.checkpoint import check_compatible, load_checkpoint

log = logging.getLogger(__name__)

HANDOVER_BYTES = 64 << 20  # larger probabilities reach an export worker through a temporary file, not a pickle


@dataclass
class Model:
    """The networks of one configuration (one per fold, ``folds`` naming them in the same order) and its plan
    entry; for a cascade stage, the previous stage's model (run first; its segmentation becomes one-hot input
    channels for ``foreground`` labels). ``predictor``: the registered predictor that turns a case into
    probabilities with the networks (:mod:`segpipe.inference.predictors`)."""

    config: Configuration
    networks: list[torch.nn.Module]
    previous: Model | None = None
    foreground: tuple[int, ...] = ()
    folds: tuple[str, ...] = ()
    predictor: str = DEFAULT_PREDICTOR

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
        net = build_network(config, n_channels, n_classes, deep_supervision=False)
        net.load_state_dict(state["network"])
        nets.append(net.to(device).eval())
    return Model(config, nets, folds=tuple(str(f) for f in folds))


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


def _export(args) -> tuple[str, dict[str, Any] | None]:
    """Worker: average the configurations' probabilities in the raw geometry, post-process, write. Each
    configuration's probabilities are resampled back with the orders of its own plan entry (``resampling``,
    one :class:`~segpipe.planning.plans.Resampling` per part). With ``expected`` (``--uncertainty``: each part's
    expected entropy ``(Z, Y, X)``), the entropy and mutual-information maps are written too. Returns the label
    map's path and the case's uncertainty scores (None without ``expected``)."""
    parts, geo, out_path, postprocess, save_probs, labels, resampling, region_order, expected = args
    if multiprocessing.parent_process() is not None:  # a worker: the cores are the network's (as in training)
        torch.set_num_threads(1)
    loaded = [(_load(p), props) for p, props in parts]
    seg = export_prediction(loaded, out_path, geo, save_probs, postprocess, labels, resampling, region_order)
    if expected is None:
        return str(out_path), None
    scores = export_uncertainty(loaded, [_load(e) for e in expected], out_path, geo, seg, resampling,
                                regions=region_order is not None)
    return str(out_path), scores


def _load(item: torch.Tensor | Path | str) -> torch.Tensor | np.ndarray:
    """An array handed to an export worker: memory-mapped when it came as a temporary ``.npy`` file."""
    return np.load(item, mmap_mode="r") if isinstance(item, (str, Path)) else item


def _hand_over(probs: torch.Tensor, folder: Path, cid: str, k: int) -> Path | None:
    """Write ``probs`` to a temporary ``.npy`` in ``folder`` for an export worker to memory-map (named like
    :mod:`segpipe.io.atomic`'s temporaries, so that a killed run's are removed by the next one). None when it
    cannot be written (e.g. a nearly full disk): the caller then sends the array itself."""
    path = folder / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{cid}.probabilities-{k}.npy"
    arr = np.ascontiguousarray(probs.numpy())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # not np.save: its tofile() hides a full disk's errno
            np.lib.format.write_array_header_2_0(fh, np.lib.format.header_data_from_array_1_0(arr))
            fh.write(arr.data)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.warning("case %s: the probabilities (%d MB) go to the export worker in memory: no temporary file "
                    "in %s (%s)", cid, arr.nbytes >> 20, folder, e)
        return None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return path


def _case_of(task: CaseTask) -> str:
    if task.case is None:  # every task of predict_folder is submitted with its case id
        raise ValueError("predict: a task without a case id")
    return task.case


def predict_folder(spec: DatasetSpec, models: list[Model], input_dir: Path, output_dir: Path, device: torch.device,
                   mirror: bool = True, save_probabilities: bool = False, postprocess: dict | None = None,
                   workers: int = 1, batch_size: int | None = None, pixel_spacing: float | None = None,
                   amp_dtype: torch.dtype | None = None, spacing_csv: Path | None = None, step: float = 0.5,
                   uncertainty: bool = False) -> list[str]:
    """Predict every case of ``input_dir`` into ``output_dir`` (never into ``input_dir``); returns the label
    maps written. ``uncertainty``: also write each case's entropy and mutual-information maps and
    ``uncertainty.json`` (:mod:`segpipe.inference.uncertainty`)."""
    input_dir, output_dir = Path(input_dir).absolute(), Path(output_dir).absolute()
    if output_dir == input_dir:
        raise fail("output folder is the input folder", "write predictions to another folder", file=output_dir)
    cases = resolve_inputs(input_dir, spec, pixel_spacing, spacing_csv)
    in_spec = input_spec(spec, input_dir, cases)
    # every configuration to preprocess each case for: the models' and, for cascade stages, their previous stages'
    configs = [m.config for m in models] + [m.previous.config for m in models if m.previous is not None]
    ending = file_ending(cases[0].images[0]) or spec.file_ending
    remove_stale_temporaries(output_dir)  # left by a killed earlier run (a live run's are kept)
    written: list[str] = []
    scores: dict[str, dict[str, Any]] = {}  # --uncertainty: each case's
    failures: dict[str, list[Problem]] = {}
    ahead = max(2, workers + 1)  # cases read and preprocessed ahead of the network
    with CasePool(workers, "predict") as pool, CaseProgress(len(cases), "predict") as bar:
        preparing: list[CaseTask] = []
        exporting: list[tuple[CaseTask, list[Path]]] = []  # with the temporary files handed to each export
        queue = iter(cases)

        def finish_exports(keep: int) -> None:
            while len(exporting) > keep:
                task, handed = exporting.pop(0)
                ok, value = pool.outcome(task)
                _remove(handed)  # the worker is done with them (or died: a re-run has finished too)
                if ok:
                    written.append(value[0])
                    if value[1] is not None:
                        scores[_case_of(task)] = value[1]
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
            out_path = output_dir / f"{cid}{ending}"
            handed: list[Path] = []
            try:
                parts: list[tuple[torch.Tensor | Path, dict]] = []
                expected: list[torch.Tensor] | None = [] if uncertainty else None
                for probs, props in case_probabilities(models, prepared, spec.n_outputs, mirror, device, batch_size,
                                                       amp_dtype, step, spec.region_order, entropy_out=expected):
                    path = None
                    if pool.workers > 1 and probs.numel() * probs.element_size() > HANDOVER_BYTES:
                        path = _hand_over(probs, output_dir, cid, len(handed))
                    if path is not None:  # the worker memory-maps it; this process keeps no copy
                        handed.append(path)
                        parts.append((path, props))
                    else:
                        parts.append((probs, props))
                    del probs
                handed_expected = None if expected is None else [
                    _handed(e, pool.workers, output_dir, cid, handed) for e in expected]
                del expected
            except Exception as e:  # noqa: BLE001 - reported with this case; the other cases go on
                _remove(handed)
                failures[cid] = failure_problems(e, "predict", cid)
                bar.update(cid, failed=True)
                continue
            del prepared, value
            resampling = [m.config.resampling for m in models]  # one per part, in the order of ``parts``
            exporting.append((pool.submit(_export, (parts, geo, out_path, postprocess, save_probabilities,
                                                    spec.classes, resampling, spec.region_order,
                                                    handed_expected), cid), handed))
            del parts, handed_expected
            finish_exports(keep=max(0, workers - 1))
        finish_exports(keep=0)
    if uncertainty and scores:  # the cases that succeeded, also when others failed
        write_summary(output_dir, scores, _members(models, mirror),
                      max_entropy(spec.n_outputs, binary=spec.region_order is not None))
    if failures:
        raise case_failures_error(failures, len(cases), "predict")
    return written


def _handed(volume: torch.Tensor, workers: int, folder: Path, cid: str, handed: list[Path]) -> torch.Tensor | Path:
    """``volume`` as it goes to the export worker: a temporary file (appended to ``handed``) when it is over
    ``HANDOVER_BYTES`` and there are workers, as the probabilities go; else the tensor itself."""
    if workers > 1 and volume.numel() * volume.element_size() > HANDOVER_BYTES:
        path = _hand_over(volume, folder, cid, len(handed))
        if path is not None:
            handed.append(path)
            return path
    return volume


def _members(models: Sequence[Model], mirror: bool) -> dict[str, Any]:
    """The ensemble members of a prediction, for ``uncertainty.json``: per configuration its folds and
    mirrorings (members = folds x mirrorings; the configurations' probabilities are averaged with equal weight)."""
    out = {}
    for m in models:
        mirrorings = 2 ** len(mirror_axes_for(m.config.ndim)) if mirror else 1
        out[m.config_name] = {"folds": list(m.folds), "mirrorings": mirrorings,
                              "members": len(m.networks) * mirrorings}
    return out


def _remove(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def case_probabilities(models: Sequence[Model], prepared: Sequence[tuple[np.ndarray, dict]], n_classes: int,
                       mirror: bool, device: torch.device, batch_size: int | None = None,
                       amp_dtype: torch.dtype | None = None, step: float = 0.5,
                       region_order: Sequence[int] | None = None, entropy_out: list[torch.Tensor] | None = None
                       ) -> Iterator[tuple[torch.Tensor, dict]]:
    """Each model's ``(probabilities (n_classes, Z, Y, X), props)`` for one case, one model at a time
    (``n_classes``: network outputs; with ``region_order`` they are region probabilities, one sigmoid each).
    ``entropy_out``: a list that receives each model's expected entropy over its members ``(Z, Y, X)``
    (float32, :func:`predict_case`'s ``entropy_out``), appended before that model's probabilities are yielded.

    ``prepared``: the case preprocessed for each model's configuration (``(data (c, Z, Y, X), props)``, in the
    order of ``models``), then for each cascade stage's previous stage (in the same order): a cascade stage
    runs its previous stage first and takes that segmentation, resampled to its own grid, as one-hot input
    channels (:func:`segpipe.preprocessing.cascade.cascade_input`)."""
    extra = iter(prepared[len(models):])
    for model, (pdata, props) in zip(models, prepared):
        if model.previous is not None:
            prev_data, prev_props = next(extra)
            prev = predict_case(model.previous, prev_data, n_classes, mirror, device, batch_size, amp_dtype, step,
                                region_order)
            prev_label = export_prediction([(prev, prev_props)], resampling=[model.previous.config.resampling],
                                           region_order=region_order)
            del prev
            pdata = cascade_input(pdata, props, model.config, prev_label, model.foreground)
        if entropy_out is None:
            yield predict_case(model, pdata, n_classes, mirror, device, batch_size, amp_dtype, step,
                               region_order), props
            continue
        expected = torch.empty(tuple(pdata.shape[1:]), dtype=torch.float32)
        probs = predict_case(model, pdata, n_classes, mirror, device, batch_size, amp_dtype, step, region_order,
                             entropy_out=expected)
        entropy_out.append(expected)
        yield probs, props


def predict_case(model: Model, pdata: np.ndarray, n_classes: int, mirror: bool, device: torch.device,
                 batch_size: int | None = None, amp_dtype: torch.dtype | None = None, step: float = 0.5,
                 region_order: Sequence[int] | None = None, entropy_out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Fold-averaged softmax probabilities of one configuration for one preprocessed case ``(c, Z, Y, X)``
    (region probabilities, a sigmoid per output, when ``region_order`` is given),
    at the configuration's spacing: ``(n_classes, Z, Y, X)`` float32 on the CPU, one array for all folds,
    by the model's predictor (default :func:`segpipe.inference.sliding_window.predict_sliding_window`, which sums
    them in place). ``entropy_out`` (``(Z, Y, X)`` float32, CPU) receives the expected entropy over the folds'
    mirrorings (uncertainty)."""
    cfg = model.config
    if not model.networks:
        raise ValueError(f"configuration {cfg.name}: no trained network to predict with")
    mirror_axes = mirror_axes_for(cfg.ndim) if mirror else None
    return run_predictor(model.predictor, model.networks, pdata, list(cfg.patch_size), n_classes,
                         mirror_axes=mirror_axes, batch_size=batch_size or cfg.batch_size, device=device,
                         amp=amp_dtype is not None, amp_dtype=amp_dtype, step=step,
                         sigmoid=region_order is not None, entropy_out=entropy_out)


def export_case(parts: list[tuple[torch.Tensor | np.ndarray, dict]], geometry: GeometryDict | dict,
                out_path: Path, save_probabilities: bool = False, postprocess: dict | None = None,
                labels: dict[str, Any] | None = None,
                resampling: Sequence[Resampling] | None = None, region_order: Sequence[int] | None = None
                ) -> np.ndarray:
    """Write one case's label map (and probabilities) from ``(probabilities, props)`` per configuration, as
    :func:`predict_folder` does; returns the label map. ``resampling``: each configuration's plan entry
    (``config.resampling``, one per part). (:func:`export_prediction` with predict's arguments.)"""
    return export_prediction(parts, out_path, geometry, save_probabilities, postprocess, labels, resampling,
                             region_order)
