"""predict and the plan (issue 12 loose ends): each configuration's export uses the orders of its own plan entry
(``Configuration.resampling``), the cascade's previous stage included; and ``run_predict`` looks each
configuration's trained folds up once (a cascade's previous stage too), naming in its description the folds it
loaded."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import hippo_file, hippo_ids

import segpipe.inference.models as models_module
import segpipe.inference.predict as predict_module
import segpipe.inference.run as run_module
from segpipe.dataset.store import load_dataset
from segpipe.inference.predict import Model, predict_folder
from segpipe.planning.plans import load_plans
from segpipe.workspace import Workspace


def _net(in_channels: int, n_classes: int, seed: int) -> torch.nn.Module:
    """A 1x1x1 convolution: a stand-in network with fixed random weights."""
    conv = torch.nn.Conv3d(in_channels, n_classes, 1)
    with torch.no_grad():
        conv.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return conv.eval()


def test_predict_exports_with_each_configurations_resampling(tiny_ws_template: Path, tmp_path: Path,
                                                               monkeypatch):
    ws = Workspace(tiny_ws_template, "tiny")
    spec = load_dataset(ws)
    cfg = load_plans(ws).configuration("3d_fullres")
    # the cascade's and its previous stage's plan entries, each with its own (non-default) orders
    prev_cfg = dataclasses.replace(cfg, name="prev", resampling=dataclasses.replace(cfg.resampling, label_order=0))
    cascade_cfg = dataclasses.replace(cfg, name="cascade", previous_stage="prev",
                                      resampling=dataclasses.replace(cfg.resampling, coarse_axis_order=1,
                                                                     anisotropy_threshold=2.0))
    foreground = (1, 2)
    previous = Model(prev_cfg, [_net(1, spec.n_classes, 0)], folds=("0",))
    cascade = Model(cascade_cfg, [_net(1 + len(foreground), spec.n_classes, 1)], previous=previous,
                    foreground=foreground, folds=("0",))
    plain = Model(cfg, [_net(1, spec.n_classes, 2)], folds=("0",))
    img = tmp_path / "images"
    img.mkdir()
    cid = hippo_ids(10)[7]
    shutil.copy(hippo_file(cid), img / f"{cid}_0000.nii.gz")

    calls: list[tuple[Path | None, list]] = []
    real = predict_module.export_prediction

    def spy(parts, out_path=None, geometry=None, save_probabilities=False, postprocess=None, labels=None,
            resampling=None, region_order=None):
        calls.append((out_path, list(resampling) if resampling is not None else None))
        return real(parts, out_path, geometry, save_probabilities, postprocess, labels, resampling, region_order)

    monkeypatch.setattr(predict_module, "export_prediction", spy)
    written = predict_folder(spec, [cascade, plain], img, tmp_path / "out", torch.device("cpu"), mirror=False,
                             workers=1)
    assert [Path(w).name for w in written] == [f"{cid}.nii.gz"]
    # first the previous stage's segmentation (no file), then the ensemble's file: one entry per configuration
    assert calls == [(None, [prev_cfg.resampling]),
                     (tmp_path / "out" / f"{cid}.nii.gz", [cascade_cfg.resampling, cfg.resampling])]


def test_run_predict_looks_the_folds_up_once(tmp_path: Path, monkeypatch):
    """A cascade (3d_cascade_fullres after 3d_lowres): each configuration's trained folds are looked up once, and
    the description names the folds that were loaded."""
    ws = Workspace(tmp_path / "ws", "d")
    ws.dir.mkdir(parents=True)
    configs = {"3d_lowres": SimpleNamespace(name="3d_lowres", previous_stage=None),
               "3d_cascade_fullres": SimpleNamespace(name="3d_cascade_fullres", previous_stage="3d_lowres")}
    plans = SimpleNamespace(default_configuration="3d_cascade_fullres", configuration=lambda name: configs[name])
    spec = SimpleNamespace(n_channels=1, n_classes=3, n_outputs=3, labels={"background": 0, "a": 1, "b": 2},
                           region_order=None)
    trained = {"3d_lowres": [["0", "1", "2"], ["0", "1", "2", "3"]],  # a fold that finishes in between
               "3d_cascade_fullres": [["0", "1"], ["0", "1", "4"]]}
    lookups: list[str] = []

    def trained_folds(ws_, config, checkpoint="final"):
        lookups.append(config)
        return trained[config][min(lookups.count(config), 2) - 1]

    def load_model(root, config, folds, n_channels, n_classes, device, checkpoint="final"):
        return Model(config, [], folds=tuple(folds))

    monkeypatch.setattr(run_module, "load_dataset", lambda ws_: spec)
    monkeypatch.setattr(models_module, "load_dataset", lambda ws_: spec)
    monkeypatch.setattr(models_module, "load_plans", lambda ws_: plans)
    monkeypatch.setattr(models_module, "trained_folds", trained_folds)
    monkeypatch.setattr(models_module, "load_model", load_model)
    monkeypatch.setattr(models_module, "_check_folds_plan", lambda *a: None)
    monkeypatch.setattr(run_module, "_write_predict_record", lambda *a: None)
    monkeypatch.setattr(run_module, "predict_folder", lambda *a, **k: [])
    written, desc = run_module.run_predict(ws, tmp_path / "in", tmp_path / "out", configs=["3d_cascade_fullres"],
                                           device="cpu")
    assert written == []
    assert sorted(lookups) == ["3d_cascade_fullres", "3d_lowres"]
    assert desc == "3d_lowres (folds 0, 1, 2) -> 3d_cascade_fullres (folds 0, 1)"
