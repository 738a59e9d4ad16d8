"""One Python function per stage, with explicit paths: what ``segpipe <stage>`` does, for scripts and automated
dataset onboarding (no environment variables, no argument parsing, no printing; errors are
:class:`segpipe.errors.SegpipeError` naming the file, the problem and the fix).

``workspace`` is the workspace folder and ``name`` the data set in it (default: the workspace's only one). Each
function returns what its stage wrote or decided. docs/api.md runs a whole chain of them as a test.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segpipe.workspace import Workspace

PathLike = str | os.PathLike[str]


def _ws(workspace: PathLike, name: str | None) -> Workspace:
    return Workspace.locate(str(workspace), name).require_dataset()


def onboard(source: PathLike, workspace: PathLike, name: str, *, labels: Mapping[str, int] | None = None,
            channels: Sequence[str] | None = None, format: str = "auto", copy: bool = False, workers: int = 1,
            force: bool = False, allow_external_links: bool = False) -> Path:
    """Describe and validate the labelled images in ``source`` as data set ``name``; returns its folder in the
    workspace (``<workspace>/<name>``, holding dataset.json). ``labels`` (name -> value) and ``channels`` (names
    in order) are needed only where the folder does not declare them."""
    from segpipe.dataset.formats.common import OnboardOptions
    from segpipe.dataset.onboard import onboard as run_onboard

    options = OnboardOptions(name=name, format=format, channels=list(channels or []), labels=dict(labels or {}))
    ws, _, _, _ = run_onboard(source, workspace, options, copy=copy, workers=workers, force=force,
                              allow_external_links=allow_external_links)
    return ws.dir


def fingerprint(workspace: PathLike, name: str | None = None, *, workers: int = 1, force: bool = False
                ) -> dict[str, Any]:
    """Per-case geometry and intensity statistics; returns fingerprint.json's content."""
    from segpipe.fingerprint.run import run_fingerprint

    return run_fingerprint(_ws(workspace, name), workers=workers, force=force)[0]


def plan(workspace: PathLike, name: str | None = None, *, like: PathLike | None = None, force: bool = False,
         **overrides: Any) -> Any:
    """Plans for every configuration (:class:`segpipe.planning.plans.Plans`); ``like``: another planned data
    set's folder whose plans are used unchanged; ``overrides``: ``preset`` (default, resenc-m, resenc-l,
    resenc-xl), ``memory_gb``, ``spacing``, ``patch_size``, ``batch_size``, ``config``, ``network``,
    ``budget_s``, ``device``, ``precision`` as ``segpipe plan`` takes them."""
    from segpipe.planning.run import run_plan

    return run_plan(_ws(workspace, name), like=Path(like) if like is not None else None, force=force,
                    **overrides)[0]


def preprocess(workspace: PathLike, config: str, name: str | None = None, *, workers: int = 1,
               force: bool = False) -> Path:
    """Preprocess every case for ``config``; returns the folder of the preprocessed cases."""
    from segpipe.planning.plans import load_plans
    from segpipe.preprocessing.run import run_preprocess

    ws = _ws(workspace, name)
    run_preprocess(ws, config, workers=workers, force=force)
    return ws.preprocessed(load_plans(ws).configuration(config).data_identifier)


def train(workspace: PathLike, config: str, fold: int | str, name: str | None = None, *,
          init_from: PathLike | None = None, init_mode: str = "full", force: bool = False, validate: bool = True,
          **settings: Any) -> dict[str, Any]:
    """Train (or resume) one fold; returns ``{"state", "validation", "out"}`` (the fold folder in ``out``).
    ``settings``: :class:`segpipe.training.trainer.TrainSettings` fields (``epochs``, ``budget_s``,
    ``iterations_per_epoch``, ``device``, ``precision``, ``workers``, ...)."""
    from segpipe.training.run import run_train
    from segpipe.training.trainer import TrainSettings

    return run_train(_ws(workspace, name), config, str(fold), TrainSettings(**settings), force=force,
                     validate=validate, init_from=Path(init_from) if init_from is not None else None,
                     init_mode=init_mode)


def predict(workspace: PathLike, input_dir: PathLike, output_dir: PathLike, name: str | None = None, *,
            configs: Sequence[str] | None = None, folds: Sequence[int | str] | None = None, best: bool = False,
            mirror: bool = True, device: str = "auto", precision: str = "auto", workers: int = 1,
            uncertainty: bool = False, predictor: str = "sliding-window") -> list[str]:
    """Segment every image of ``input_dir`` into ``output_dir`` (never into ``input_dir``); returns the label maps
    written. ``uncertainty``: also the entropy and mutual-information maps and ``uncertainty.json``;
    ``predictor``: a registered predictor (``segpipe predict --predictor``). For arrays and images in memory use
    :class:`segpipe.inference.predictor.Predictor`."""
    from segpipe.inference.run import run_predict

    written, _ = run_predict(_ws(workspace, name), Path(input_dir), Path(output_dir),
                             list(configs) if configs else None, [str(f) for f in folds] if folds else None,
                             best=best, mirror=mirror, device=device, precision=precision, workers=workers,
                             uncertainty=uncertainty, predictor=predictor)
    return written


def adapt(workspace: PathLike, input_dir: PathLike, output: PathLike, name: str | None = None, *,
          config: str | None = None, folds: Sequence[int | str] | None = None, checkpoint: str = "final",
          device: str = "auto", precision: str = "auto", workers: int = 1, pixel_spacing: float | None = None,
          spacing_csv: PathLike | None = None, force: bool = False, **settings: Any) -> Any:
    """Adapt trained folds to the unlabelled images of ``input_dir`` (test-time adaptation, ``segpipe adapt``)
    and write the adapted model as the workspace ``output`` (predict with ``Predictor(output, ...)``); the
    source workspace is only read. Returns :class:`segpipe.adaptation.run.AdaptResult` (``output``, ``config``,
    and per fold its record). ``settings``: :class:`segpipe.adaptation.tent.TentSettings` fields, as the flags of
    ``segpipe adapt`` give them (``steps``, ``lr``, ``patches``, ``mirrorings``, ``seed``, ...)."""
    from segpipe.adaptation.run import run_adapt
    from segpipe.adaptation.tent import TentSettings

    return run_adapt(_ws(workspace, name), Path(input_dir), Path(output), config=config,
                     folds=[str(f) for f in folds] if folds else None, settings=TentSettings(**settings),
                     checkpoint=checkpoint, device=device, precision=precision, workers=workers,
                     pixel_spacing=pixel_spacing, spacing_csv=Path(spacing_csv) if spacing_csv else None,
                     force=force)


def evaluate(pred_dir: PathLike, ref_dir: PathLike, labels: Mapping[str, Any], output: PathLike | None = None, *,
             workers: int = 1, surface: bool = True, attributes: PathLike | None = None,
             group_by: Sequence[str] = (), metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics of the label maps in ``pred_dir`` against ``ref_dir`` (same file names); returns the summary
    (written with per-case metrics to ``output`` when given). ``labels``: ``{name: value}`` (a region's value is
    a list of values). ``attributes`` (a CSV: case id and attribute columns) with ``group_by`` (its columns)
    adds every metric per group and the equity-scaled Dice (``summary["groups"]``). ``metrics``: registered metrics
    (plug-ins' included) to add per case and class and to the means (default: every one not marked expensive)."""
    from segpipe.evaluation.evaluate import evaluate_folders

    return evaluate_folders(Path(pred_dir), Path(ref_dir), dict(labels), Path(output) if output else None,
                            workers=workers, surface=surface, attributes=Path(attributes) if attributes else None,
                            group_by=list(group_by), metrics=list(metrics) if metrics is not None else None)


def report(workspace: PathLike, name: str | None = None, *, force: bool = False) -> Path:
    """Write the data set's HTML report (``<workspace>/<dataset>/report/index.html``) from the stages that have
    run; returns the page's path."""
    from segpipe.report import write_report

    return Path(write_report(_ws(workspace, name), force=force).index)


def select(workspace: PathLike, name: str | None = None, *, configs: Sequence[str] | None = None,
           force: bool = False) -> dict[str, Any]:
    """Pick the best configuration / ensemble and post-processing from cross-validation; returns
    selection.json's content."""
    from segpipe.evaluation.selection import run_select

    return run_select(_ws(workspace, name), list(configs) if configs else None, force=force)
