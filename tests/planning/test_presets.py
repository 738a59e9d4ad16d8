"""Planner presets equal to nnU-Net 2.8.1's residual-encoder planners (ResEnc M, L, XL): segpipe's plans of two
real data sets must equal the plans nnU-Net made of them (tests/fixtures/nnunet_resenc_plans.json, with the
commands that made it): spacing, patch, batch, stages, features, kernels, strides, residual blocks per stage
and decoder convs, for every configuration nnU-Net planned."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO

from segpipe.dataset.model import DatasetSpec
from segpipe.networks.registry import build_network
from segpipe.planning.planner import plan_dataset
from segpipe.planning.plans import NetworkPlan
from segpipe.planning.presets import PRESETS, residual_feature_map_voxels

FIXTURE = json.loads((REPO / "tests" / "fixtures" / "nnunet_resenc_plans.json").read_text())
CASES = [(d, p) for d in FIXTURE["datasets"] for p in ("resenc-m", "resenc-l", "resenc-xl")]


def _plan(dataset: str, preset: str) -> dict:
    entry = FIXTURE["datasets"][dataset]
    spec = DatasetSpec(dataset, "/fixture", "nnunet", entry["channels"], entry["labels"], ".nii.gz", [])
    p = PRESETS[preset]
    return plan_dataset(entry["segpipe_fingerprint"], spec, p.memory_gb, network=p.network, preset=p)


@pytest.mark.parametrize("dataset, preset", CASES)
def test_presets_plan_what_nnunet_plans(dataset: str, preset: str):
    ours = _plan(dataset, preset)["configurations"]
    theirs = FIXTURE["datasets"][dataset]["nnunet"][preset]
    # the same configurations (nnU-Net's 3d_cascade_fullres inherits 3d_fullres's entry, so it has none of its own)
    assert set(ours) - {"3d_cascade_fullres"} == set(theirs), (sorted(theirs), sorted(ours))
    assert ("3d_cascade_fullres" in ours) == ("3d_lowres" in ours)
    for name, want in theirs.items():
        got, net = ours[name], ours[name]["network"]
        assert net["name"] == "residual"
        assert got["patch_size"] == want["patch_size"], name
        assert got["batch_size"] == want["batch_size"], name
        assert got["spacing"] == pytest.approx(want["spacing"]), name
        assert net["n_stages"] == want["n_stages"] and net["features_per_stage"] == want["features_per_stage"]
        assert net["strides"] == want["strides"] and net["kernel_sizes"] == want["kernel_sizes"], name
        assert net["n_conv_per_stage"] == want["n_blocks_per_stage"], name
        assert net["n_conv_per_stage_decoder"] == want["n_conv_per_stage_decoder"], name


def test_the_presets_differ_from_the_default_and_grow_with_memory():
    default = _plan("headneck5", "default")["configurations"]["3d_fullres"]
    sizes = [_plan("headneck5", p)["configurations"]["3d_fullres"] for p in ("resenc-m", "resenc-l", "resenc-xl")]
    assert default["network"]["name"] == "plain"
    volumes = [c["batch_size"] * int(torch.tensor(c["patch_size"]).prod()) for c in sizes]
    assert volumes == sorted(volumes) and volumes[0] < volumes[-1]  # more memory: more voxels per batch


def test_the_memory_model_counts_the_residual_network_it_plans():
    """The activation count equals the conv outputs of segpipe's residual network, counted with hooks."""
    plan = _plan("hippocampus", "resenc-m")["configurations"]["3d_fullres"]
    net = build_network(NetworkPlan.from_json(plan["network"]), 1, 3, deep_supervision=False)
    counted = []
    hooks = [m.register_forward_hook(lambda m, i, o: counted.append(o[0].numel()))
             for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        net(torch.zeros(1, 1, *plan["patch_size"]))
    for h in hooks:
        h.remove()
    topo = plan["network"]
    expected = residual_feature_map_voxels(plan["patch_size"], topo["strides"], topo["features_per_stage"], 3,
                                           topo["n_conv_per_stage"], 1)
    assert sum(counted) == expected


def test_plan_preset_from_the_cli(tiny_ws_template: Path, tmp_path: Path, capsys):
    from conftest import copy_ws

    from segpipe.cli import main
    from segpipe.io.jsonio import read_json

    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["plan", "-w", str(ws), "--preset", "resenc-l", "--force"]) == 0
    plans = read_json(ws / "tiny" / "plans.json", kind="plans")
    assert plans["memory_budget"]["gb"] == 24 and plans["memory_budget"]["preset"] == "resenc-l"
    assert plans["configurations"]["3d_fullres"]["network"]["name"] == "residual"
    assert main(["plan", "-w", str(ws), "--preset", "resenc-m", "--network", "plain", "--force"]) == 0
    assert main(["plan", "-w", str(ws), "--preset", "resenc-m", "--network", "plainx", "--force"]) == 2


def test_a_preset_with_a_budget_is_refused(tiny_ws_template: Path, tmp_path: Path, capsys):
    from conftest import copy_ws

    from segpipe.cli import main

    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["plan", "-w", str(ws), "--preset", "resenc-m", "--budget", "5m", "--force"]) == 2
    assert "--preset resenc-m and --budget" in capsys.readouterr().err
