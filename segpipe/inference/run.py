"""``segpipe predict``: choose the models (configurations, folds, post-processing) and predict a folder."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe import records
from segpipe.dataset.store import load_dataset
from segpipe.devices import autocast_dtype, pick_device
from segpipe.inference.models import chosen_models, load_models
from segpipe.inference.predict import Model, predict_folder
from segpipe.inference.predictors import DEFAULT_PREDICTOR, check_predictor
from segpipe.inference.uncertainty import SUMMARY_NAME, uncertainty_paths
from segpipe.locking import locked
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def _output_lock(ws: Workspace, input_dir: Path, output_dir: Path, *args, **kwargs) -> str:
    return "predict-" + records.output_stage(ws, "predict", Path(output_dir))


@locked("predict", exclusive=False, own=_output_lock)
def run_predict(ws: Workspace, input_dir: Path, output_dir: Path, configs: list[str] | None = None,
                folds: list[str] | None = None, best: bool = False, mirror: bool = True,
                save_probabilities: bool = False, checkpoint: str = "final", device: str = "auto",
                workers: int = 1, pixel_spacing: float | None = None,
                precision: str = "auto", spacing_csv: Path | None = None, step: float = 0.5,
                uncertainty: bool = False, predictor: str = DEFAULT_PREDICTOR) -> tuple[list[str], str]:
    """Predict ``input_dir`` into ``output_dir`` with the chosen models; returns (written files, description).

    2D inputs (PNG, ...) need their pixel size (mm): ``pixel_spacing`` for all, or ``spacing_csv`` per file.
    ``uncertainty``: also each case's entropy and mutual-information maps and ``uncertainty.json``
    (:mod:`segpipe.inference.uncertainty`). ``predictor``: the registered predictor
    (:mod:`segpipe.inference.predictors`; default the sliding window), recorded.
    """
    check_predictor(predictor, uncertainty)
    spec = load_dataset(ws)
    configs, folds, postprocess = chosen_models(ws, configs, folds, best)
    dev = pick_device(device)
    models = load_models(ws, configs, folds, checkpoint, dev, predictor)

    def folds_of(m: Model) -> str:
        """The folds ``m`` was loaded with: each configuration's trained folds are looked up once, above."""
        return ", ".join(m.folds)

    desc = " + ".join((f"{m.previous.config_name} (folds {folds_of(m.previous)}) -> " if m.previous is not None
                       else "") + f"{m.config_name} (folds {folds_of(m)})" for m in models)
    if postprocess and (postprocess.get("foreground") or postprocess.get("classes")):
        desc += f", post-processing {postprocess}"
    if predictor != DEFAULT_PREDICTOR:
        desc += f", predictor '{predictor}'"
    written = predict_folder(spec, models, input_dir, output_dir, dev, mirror=mirror,
                             save_probabilities=save_probabilities, postprocess=postprocess, workers=workers,
                             pixel_spacing=pixel_spacing, amp_dtype=autocast_dtype(dev, precision),
                             spacing_csv=spacing_csv, step=step, uncertainty=uncertainty)
    settings = {"configs": [m.config_name for m in models], "folds": folds, "checkpoint": checkpoint,
                "mirror": mirror, "postprocess": postprocess, "pixel_spacing": pixel_spacing, "step": step,
                "predictor": predictor}
    outputs = list(written)
    if uncertainty:  # recorded only when asked for: a plain prediction's record is what it was
        settings["uncertainty"] = True
        outputs += [str(p) for w in written for p in uncertainty_paths(w)]
        outputs.append(str(Path(output_dir) / SUMMARY_NAME))
    _write_predict_record(ws, input_dir, output_dir, models, outputs, settings)
    if uncertainty:
        desc += f", uncertainty in {SUMMARY_NAME}"
    return written, desc



def _write_predict_record(ws: Workspace, input_dir: Path, output_dir: Path, models: list, written: list[str],
                          settings: dict) -> None:
    """Provenance of a prediction in the workspace's records/ (never in the user's output folder)."""
    input_dir, output_dir = Path(input_dir).absolute(), Path(output_dir).absolute()
    inputs = records.input_state([], sorted(p for p in input_dir.iterdir() if p.is_file()))
    for m in models:
        inputs["plan:" + m.config_name] = records.config_hash(m.config.to_json())
        ck = f"checkpoint_{settings['checkpoint']}.pt"
        inputs.update(records.input_state([], sorted(ws.dir.glob(f"results/{m.config_name}/fold_*/{ck}"))))
    records.write_output_record(ws, "predict", output_dir, inputs, settings, [Path(w) for w in written],
                                info={"input": str(input_dir)})
