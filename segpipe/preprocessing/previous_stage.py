"""A cascade stage's second input: the previous stage's cross-validation segmentation of every training case,
on the cascade's preprocessed grid (``preprocessed/<data_identifier>/previous_stage/<previous>/<case>_prev.b2nd``,
through :mod:`segpipe.preprocessing.store`).

Written by ``segpipe preprocess --config <cascade>`` (this module is called by the preprocess runner; it is the
only writer), read by training and validation through the store (``open_previous_stage``,
``load_previous_stage``). Each case's segmentation is
the export of the fold that held the case out (``results/<previous>/fold_<k>/validation/<case><ending>``, in the
raw image's geometry), so no case is segmented by a model that saw it, as in nnU-Net. The folder records the
files it was made from; when they change (a lowres fold retrained), it is made again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segpipe.dataset.model import DatasetSpec
from segpipe.errors import fail
from segpipe.io.images import read_image
from segpipe.parallel import map_cases
from segpipe.planning.plans import Configuration, Plans
from segpipe.preprocessing.cascade import previous_stage_on_grid
from segpipe.preprocessing.store import load_properties, previous_stage_path, write_previous_stage
from segpipe.records import input_state, up_to_date, write_record
from segpipe.training.splits import load_splits
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def previous_stage_folder(ws: Workspace, config: Configuration) -> Path:
    """Where ``config``'s previous-stage segmentations lie (``config`` must be a cascade stage)."""
    if config.previous_stage is None:
        raise ValueError(f"configuration {config.name} is not a cascade stage")
    return ws.preprocessed(config.data_identifier) / "previous_stage" / config.previous_stage


def cross_validation_exports(ws: Workspace, spec: DatasetSpec, previous: str) -> dict[str, Path]:
    """The previous stage's validation export of every case (from the fold that held it out); an error naming
    the missing folds and the command that trains them."""
    splits = load_splits(ws, [c.id for c in spec.cases])
    found: dict[str, Path] = {}
    missing: list[int] = []
    for k, split in enumerate(splits):
        files = {cid: ws.validation(previous, k) / f"{cid}{spec.file_ending}" for cid in split["val"]}
        if all(f.is_file() for f in files.values()) and (ws.validation(previous, k) / "summary.json").is_file():
            found.update(files)
        else:
            missing.append(k)
    if missing:
        raise fail(f"the cascade needs {previous}'s cross-validation segmentations of every case, but fold(s) "
                   f"{missing} of {previous} are not trained and validated",
                   f"train them first: segpipe train --config {previous} --fold each", file=ws.results_root(previous))
    return found


def _one(args: tuple[Path, Path, str, Configuration, Path]) -> str:
    """Worker: one case's previous-stage segmentation onto the preprocessed grid, written atomically. The
    exports are label maps with dataset.json's values already (no value map to apply)."""
    export, preprocessed, case_id, config, out = args
    label, _ = read_image(export)
    label = np.rint(label).astype(np.int16)
    props = load_properties(preprocessed, case_id)
    seg = previous_stage_on_grid(label, props, config)
    write_previous_stage(out, case_id, seg, config.patch_size)
    return case_id


def prepare_previous_stage(ws: Workspace, plans: Plans, config: Configuration, spec: DatasetSpec,
                           workers: int = 1, force: bool = False) -> int:
    """Write ``config``'s previous-stage segmentations (after its preprocessed data is complete). Returns the
    number of cases written now (0 when the folder is up to date)."""
    assert config.previous_stage is not None
    previous = plans.configuration(config.previous_stage)
    exports = cross_validation_exports(ws, spec, previous.name)
    out = previous_stage_folder(ws, config)
    stage = f"previous_stage_{config.data_identifier}_{previous.name}"
    inputs = input_state(sorted(exports.values()))
    settings = {"preprocessing": config.preprocessing_key(), "previous_stage": previous.name}
    outputs = [previous_stage_path(out, cid) for cid in exports]
    if not force and up_to_date(ws, stage, inputs, settings, outputs):
        log.info("previous stage %s for %s: unchanged; skipping", previous.name, config.name)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    pre = ws.preprocessed(config.data_identifier)
    args = [(exports[c.id], pre, c.id, config, out) for c in spec.cases]
    map_cases(_one, args, workers, f"previous stage {previous.name} -> {config.name}", cases=[c.id for c in spec.cases])
    write_record(ws, stage, inputs, settings, outputs)
    return len(args)


def check_previous_stage(ws: Workspace, config: Configuration, case_ids: list[str]) -> Path:
    """The previous-stage folder of a cascade ``config``, refusing one that lacks cases."""
    folder = previous_stage_folder(ws, config)
    missing = [c for c in case_ids if not previous_stage_path(folder, c).is_file()]
    if missing:
        raise fail(f"{len(missing)} case(s) have no {config.previous_stage} segmentation for the cascade "
                   f"(e.g. {missing[:3]})", f"run `segpipe preprocess --config {config.name}` after training "
                   f"{config.previous_stage} on every fold", file=folder)
    return folder
