"""``segpipe predict``: choose the models (configurations, folds, post-processing) and predict a folder."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe import records
from segpipe.dataset.store import load_dataset
from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import fail
from segpipe.inference.predict import Model, load_model, predict_folder
from segpipe.io.jsonio import read_json
from segpipe.locking import locked
from segpipe.planning.plans import Configuration, load_plans
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def trained_folds(ws: Workspace, config: str, checkpoint: str = "final") -> list[str]:
    root = ws.results_root(config)
    if not root.is_dir():
        return []
    return sorted(p.name[len("fold_"):] for p in root.glob("fold_*") if (p / f"checkpoint_{checkpoint}.pt").is_file())


def _output_lock(ws: Workspace, input_dir: Path, output_dir: Path, *args, **kwargs) -> str:
    return "predict-" + records.output_stage(ws, "predict", Path(output_dir))


@locked("predict", exclusive=False, own=_output_lock)
def run_predict(ws: Workspace, input_dir: Path, output_dir: Path, configs: list[str] | None = None,
                folds: list[str] | None = None, best: bool = False, mirror: bool = True,
                save_probabilities: bool = False, checkpoint: str = "final", device: str = "auto",
                workers: int = 1, pixel_spacing: float | None = None,
                precision: str = "auto", spacing_csv: Path | None = None) -> tuple[list[str], str]:
    """Predict ``input_dir`` into ``output_dir`` with the chosen models; returns (written files, description).

    2D inputs (PNG, ...) need their pixel size (mm): ``pixel_spacing`` for all, or ``spacing_csv`` per file.
    """
    spec = load_dataset(ws)
    plans = load_plans(ws)
    postprocess = None
    if best:
        sel = read_json(ws.selection_json, kind="selection")
        configs, folds = sel["configs"], [str(f) for f in sel["folds"]]
        postprocess = sel["postprocessing"]
    if not configs:
        configs = [plans.default_configuration]
    dev = pick_device(device)
    models = []
    for c in configs:
        cfg = plans.configuration(c)
        fs = [str(f) for f in folds] if folds else trained_folds(ws, c, checkpoint)
        if not fs:
            raise fail(f"no trained fold of {c}", f"run `segpipe train --config {c} --fold 0` (or --fold each)",
                       file=ws.results_root(c))
        previous = None
        foreground: tuple[int, ...] = ()
        if cfg.previous_stage is not None:  # a cascade stage: its previous stage runs first, with all its folds
            from segpipe.preprocessing.cascade import foreground_values

            prev_cfg = plans.configuration(cfg.previous_stage)
            prev_folds = trained_folds(ws, prev_cfg.name, checkpoint)
            if not prev_folds:
                raise fail(f"{c} needs its previous stage {prev_cfg.name}, which has no trained fold",
                           f"run `segpipe train --config {prev_cfg.name} --fold each`",
                           file=ws.results_root(prev_cfg.name))
            previous = load_model(ws.results_root(prev_cfg.name), prev_cfg, prev_folds, spec.n_channels,
                                  spec.n_classes, dev, checkpoint)
            _check_folds_plan(ws, prev_cfg.name, prev_cfg, prev_folds)
            foreground = tuple(foreground_values(spec.labels))
        model = load_model(ws.results_root(c), cfg, fs, spec.n_channels + len(foreground), spec.n_classes, dev,
                           checkpoint)
        model.previous, model.foreground = previous, foreground
        models.append(model)
        _check_folds_plan(ws, c, cfg, fs)  # after load_model, which names a changed network more precisely

    def folds_of(m: Model) -> str:
        """The folds ``m`` was loaded with: each configuration's trained folds are looked up once, above."""
        return ", ".join(m.folds)

    desc = " + ".join((f"{m.previous.config_name} (folds {folds_of(m.previous)}) -> " if m.previous is not None
                       else "") + f"{m.config_name} (folds {folds_of(m)})" for m in models)
    if postprocess and (postprocess.get("foreground") or postprocess.get("classes")):
        desc += f", post-processing {postprocess}"
    written = predict_folder(spec, models, input_dir, output_dir, dev, mirror=mirror,
                             save_probabilities=save_probabilities, postprocess=postprocess, workers=workers,
                             pixel_spacing=pixel_spacing, amp_dtype=autocast_dtype(dev, precision),
                             spacing_csv=spacing_csv)
    _write_predict_record(ws, input_dir, output_dir, models, written,
                          {"configs": [m.config_name for m in models], "folds": folds, "checkpoint": checkpoint,
                           "mirror": mirror, "postprocess": postprocess, "pixel_spacing": pixel_spacing})
    return written, desc


def _check_folds_plan(ws: Workspace, config: str, cfg: Configuration, folds: list[str]) -> None:
    """Refuse folds trained with another plan configuration than the current plans.json entry."""
    current = records.config_hash(cfg.to_json())
    for f in folds:
        fold_dir = ws.results(config, f)
        origin = records.read_fold_origin(fold_dir)
        if origin is None:
            log.debug("fold %s of %s has no %s (trained by an older segpipe); plan not checked", f, config,
                      records.TRAIN_ORIGIN)
        elif origin.get("plan_hash") != current:
            raise fail(f"fold {f} of {config} was trained with another plan: the plan configuration in "
                       "plans.json changed since", f"retrain it (segpipe train --config {config} --fold {f} "
                       "--force), or restore the plans.json it was trained with",
                       file=fold_dir / records.TRAIN_ORIGIN)


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
