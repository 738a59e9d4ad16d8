"""A third-party package extends segpipe through the ``segpipe.plugins`` entry points (docs/plugins.md).

The example plug-in in tests/fixtures/example_plugin (network ``example-net``, loss ``example-dice-ce``, trainer
``example-trainer``) is installed with pip, and segpipe plans, trains and predicts with it from the command line;
then, without it, predicting names the package to install.

pip installs it into a folder of this test (``--target``) that the segpipe processes get on ``PYTHONPATH``,
rather than into the shared virtual environment: the entry points are found through the installed package's
metadata exactly as from site-packages, and other test runs using the same environment at the same time never
see it come and go. "Uninstalling" is running without that folder.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import copy_ws, hippo_file, hippo_ids

FIXTURE = Path(__file__).parent / "fixtures" / "example_plugin"


def _install(tmp_path: Path) -> Path:
    """pip-install the example plug-in (offline, no dependencies) into a folder; returns the folder."""
    src = shutil.copytree(FIXTURE, tmp_path / "example_plugin_src")  # the build writes into its source folder
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)],
                   check=True, capture_output=True, text=True, timeout=120)
    assert (site / "segpipe_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def _segpipe(args: list[str], site: Path | None) -> subprocess.CompletedProcess:
    """``segpipe ARGS`` in a fresh process; with ``site`` the plug-in is installed there."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(([str(site)] if site else []) + paths)
    return subprocess.run([sys.executable, "-m", "segpipe", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_installed_plugin_trains_and_predicts_and_is_named_when_missing(tiny_ws_template: Path, tmp_path: Path):
    site = _install(tmp_path)
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    w = ["-w", str(ws)]
    _ok(_segpipe(["plan", *w, "--force", "--network", "example-net", "--config", "3d_fullres",
                  "--patch-size", "16", "24", "16", "--batch-size", "2"], site))
    plans = json.loads((ws / "tiny" / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["network"]["name"] == "example-net"
    _ok(_segpipe(["preprocess", *w, "--config", "3d_fullres", "--workers", "1"], site))
    _ok(_segpipe(["train", *w, "--config", "3d_fullres", "--fold", "0", "--trainer", "example-trainer",
                  "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0",
                  "--threads", "1", "--no-validation"], site))

    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    marker = json.loads((fold / "example_trainer.json").read_text())  # the plug-in's trainer ran
    assert marker["trainer"] == "example-trainer" and marker["network"] == "example-net"
    assert marker["loss_saw_cases"] and set(marker["loss_saw_cases"]) <= set(hippo_ids(6))  # batch metadata
    state = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert state["registry"] == {"network": "example-net", "trainer": "example-trainer", "loss": "example-dice-ce",
                                 "normalizer": ["zscore"]}
    plugin = {"package": "segpipe-example-plugin", "version": "0.1.0"}
    assert state["plugins"]["network"]["example-net"] == plugin and state["plugins"]["trainer"]["example-trainer"] \
        == plugin and state["plugins"]["loss"]["example-dice-ce"] == plugin
    assert state["plugins"]["normalizer"]["zscore"]["package"] == "segpipe"

    images = tmp_path / "images"
    images.mkdir()
    ids = hippo_ids(8)[6:]
    for cid in ids:
        shutil.copy(hippo_file(cid), images / f"{cid}_0000.nii.gz")
    predict = ["predict", *w, "-i", str(images), "--config", "3d_fullres", "--folds", "0", "--no-mirror",
               "--workers", "1"]
    _ok(_segpipe([*predict, "-o", str(tmp_path / "pred")], site))
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in ids)

    missing = _segpipe([*predict, "-o", str(tmp_path / "pred_missing")], None)  # the plug-in is not installed
    assert missing.returncode == 2, missing.stdout + missing.stderr
    said = missing.stdout + missing.stderr
    assert "network 'example-net', from segpipe-example-plugin 0.1.0, which is not installed" in said, said
    assert "pip install 'segpipe-example-plugin==0.1.0'" in said, said
    assert not list((tmp_path / "pred_missing").glob("*.nii.gz"))
