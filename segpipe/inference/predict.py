"""``segpipe predict``: raw images in, label maps in the images' own geometry out.

Each input case is read like onboarding reads images, preprocessed exactly as in training, predicted by every
requested fold (sliding window, Gaussian weighting, optional mirroring), the softmax averaged over folds (and
over configurations for an ensemble), resampled back and un-cropped into the original geometry, optionally
post-processed, and written as ``<case><ending>`` (plus ``<case>.npz`` probabilities on request). Cases are
preprocessed and exported in worker processes while the network predicts.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.formats.common import visible_files, strip_ending
from segpipe.dataset.reading import read_channels
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.inference.export import probabilities_path, probabilities_to_original
from segpipe.inference.sliding_window import mirror_axes_for, predict_sliding_window
from segpipe.io.atomic import atomic_save_npz
from segpipe.io.images import Geometry, file_ending, write_image
from segpipe.networks import build_network
from segpipe.parallel import _die_with_parent
from segpipe.preprocessing.case import preprocess_case
from segpipe.training.checkpoint import check_compatible, load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Model:
    """The networks of one configuration (one per fold) and its plan entry."""

    config_name: str
    config: dict
    networks: list[torch.nn.Module]


def discover_inputs(input_dir: Path, spec: DatasetSpec) -> list[CaseEntry]:
    """Cases in ``input_dir``: ``<case>_0000<ending>``, ``_0001``, ... per channel (nnU-Net naming), or for
    single-channel data sets (and multi-channel 4D MSD data) one file per case."""
    files = [p for p in visible_files(input_dir) if file_ending(p.name)]
    if not files:
        raise fail("no image files found", "put the images to segment in this folder", file=input_dir)
    rx = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
    by_case: dict[str, dict[int, str]] = {}
    plain: list[str] = []
    for p in files:
        m = rx.match(strip_ending(p.name))
        if m:
            by_case.setdefault(m["case"], {})[int(m["ch"])] = p.name
        else:
            plain.append(p.name)
    n_files = 1 if spec.channels_in_file else spec.n_channels
    if by_case and not plain:
        problems, cases = [], []
        for cid, chans in sorted(by_case.items()):
            if sorted(chans) != list(range(n_files)):
                problems.append(Problem(f"expected channel files _0000.._{n_files - 1:04d}, found "
                                        f"{sorted(chans)}", f"give {n_files} channel file(s) per case "
                                        f"({list(spec.channels.values())})", str(input_dir), cid))
            else:
                cases.append(CaseEntry(cid, [chans[i] for i in range(n_files)]))
        if problems:
            raise SegpipeError(problems)
        return cases
    if n_files != 1:
        raise fail(f"the model expects {n_files} channels {list(spec.channels.values())}; name the files "
                   "<case>_0000<ending>, <case>_0001<ending>, ...", "rename the input files", file=input_dir)
    return [CaseEntry(strip_ending(n), [n]) for n in sorted(plain + [v[0] for v in by_case.values()])]


def load_model(results_dir: Path, config_name: str, config: dict, folds: list[str], n_channels: int,
               n_classes: int, device: torch.device, checkpoint: str = "final") -> Model:
    nets = []
    for fold in folds:
        path = results_dir / config_name / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
        state = load_checkpoint(path, map_location="cpu")
        check_compatible(state, config["network"], path)
        if state.get("n_channels", n_channels) != n_channels:
            raise fail(f"checkpoint expects {state['n_channels']} channels, the data set has {n_channels}",
                       "use the workspace the model was trained in", file=path)
        net = build_network(config["network"], n_channels, n_classes, deep_supervision=False)
        net.load_state_dict(state["network"])
        nets.append(net.to(device).eval())
    return Model(config_name, config, nets)


def _prepare(args) -> tuple[str, list[tuple[np.ndarray, dict]], dict]:
    """Worker: read one input case and preprocess it for each configuration."""
    spec, root, case, configs = args
    data, geo = read_channels(spec, root, case)
    if data.shape[0] != spec.n_channels:
        raise fail(f"image has {data.shape[0]} channel(s), the model expects {spec.n_channels}",
                   "give the same channels as in training", file=root / case.images[0], case=case.id)
    out = []
    for name, cfg in configs:
        pdata, _, props = preprocess_case(data, None, geo, cfg, name, case_id=case.id)
        out.append((pdata, props))
    return case.id, out, geo.to_dict()


def _export(args) -> str:
    """Worker: average probabilities already in original geometry, post-process, write."""
    probs_list, geo, out_path, postprocess, save_probs, labels = args
    probs = np.mean(probs_list, axis=0) if len(probs_list) > 1 else probs_list[0]
    seg = np.argmax(probs, axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)
    if postprocess:
        from segpipe.evaluation.postprocessing import apply_postprocessing

        seg = apply_postprocessing(seg, postprocess, labels)
    write_image(seg, Geometry.from_dict(geo), out_path)
    if save_probs:
        atomic_save_npz(probabilities_path(out_path), probabilities=probs.astype(np.float16))
    return str(out_path)


def predict_folder(spec: DatasetSpec, models: list[Model], input_dir: Path, output_dir: Path, device: torch.device,
                   mirror: bool = True, save_probabilities: bool = False, postprocess: dict | None = None,
                   workers: int = 1, batch_size: int | None = None, pixel_spacing: float | None = None,
                   amp_dtype: torch.dtype | None = None) -> list[str]:
    """Predict every case of ``input_dir`` into ``output_dir`` (never into ``input_dir``)."""
    input_dir, output_dir = Path(input_dir).absolute(), Path(output_dir).absolute()
    if output_dir == input_dir:
        raise fail("output folder is the input folder", "write predictions to another folder", file=output_dir)
    cases = discover_inputs(input_dir, spec)
    in_spec = DatasetSpec(spec.name, str(input_dir), spec.format, spec.channels, spec.labels, spec.file_ending,
                          cases, channels_in_file=spec.channels_in_file, allow_external_links=True)
    if pixel_spacing is not None:
        for c in cases:
            c.spacing = [pixel_spacing, pixel_spacing]
    configs = [(m.config_name, m.config) for m in models]
    written: list[str] = []
    ending = file_ending(cases[0].images[0]) or spec.file_ending
    with ProcessPoolExecutor(max(1, workers), initializer=_die_with_parent) as pool:
        pending_prep: list[Future] = []
        exports: list[Future] = []
        queue = iter(cases)

        def refill() -> None:
            while len(pending_prep) < max(2, workers + 1):
                case = next(queue, None)
                if case is None:
                    return
                pending_prep.append(pool.submit(_prepare, (in_spec, input_dir, case, configs)))

        refill()
        bar = tqdm(total=len(cases), desc="predict", unit="case", disable=None)
        while pending_prep:
            cid, prepared, geo = pending_prep.pop(0).result()
            refill()
            originals = []
            for model, (pdata, props) in zip(models, prepared):
                cfg = model.config
                mirror_axes = mirror_axes_for(len(cfg["patch_size"])) if mirror else None
                probs = None
                for net in model.networks:
                    p = predict_sliding_window(net, pdata, cfg["patch_size"], len(spec.labels), mirror_axes,
                                               batch_size=batch_size or max(1, int(cfg["batch_size"])),
                                               device=device, amp=amp_dtype is not None, amp_dtype=amp_dtype)
                    probs = p if probs is None else probs + p
                probs = probs / len(model.networks)
                originals.append(probabilities_to_original(probs, props))
            out_path = output_dir / f"{cid}{ending}"
            exports.append(pool.submit(_export, (originals, geo, out_path, postprocess, save_probabilities,
                                                 spec.labels)))
            bar.update(1)
        bar.close()
        for f in exports:
            written.append(f.result())
    return written
