"""`segpipe adapt` (TENT-style test-time adaptation): only the normalization layers' affine parameters change, the
entropy on the target images goes down, the source workspace is untouched, the adapted folder predicts, and bad
input is refused naming the file. The safeguards against collapse: the class-balance term keeps the foreground
that plain entropy minimisation removes, the stopping rule fires and restores the last parameters that passed,
and their flags parse (tests/adaptation/test_safeguards.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import hippo_ids, make_msd, tree_state

from segpipe.adaptation.run import prepare_target
from segpipe.adaptation.tent import (
    TentSettings,
    adapt_network,
    all_mirrorings,
    choose_mirrorings,
    crop_or_pad,
    mean_entropy,
    norm_affine_parameters,
    voxel_entropy,
)
from segpipe.cli import main
from segpipe.dataset.store import load_dataset
from segpipe.inference.models import load_models
from segpipe.planning.plans import load_plans
from segpipe.workspace import Workspace

ADAPT_ARGS = ["--steps", "6", "--lr", "0.01", "--mirrorings", "2", "--workers", "1", "--device", "cpu",
              "--precision", "fp32"]


def _shifted_images(dst: Path) -> Path:
    """Two held-out hippocampus cases (not among the tiny workspace's 6) with gamma 2 on [0, 1] intensities."""
    images = make_msd(dst / "src", hippo_ids(8)[6:]) / "imagesTr"
    out = dst / "target"
    out.mkdir()
    for p in sorted(images.glob("*.nii.gz")):
        img = sitk.ReadImage(str(p))
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        a = ((a - a.min()) / max(float(a.max() - a.min()), 1e-6)) ** 2.0 * 1000.0
        new = sitk.GetImageFromArray(a)
        new.CopyInformation(img)
        sitk.WriteImage(new, str(out / p.name))
    return out


@pytest.fixture(scope="module")
def adapted(tiny_one_fold: Path, tmp_path_factory) -> dict:
    """Adapt the tiny model's fold 0 once to two shifted cases; what the tests look at."""
    tmp = tmp_path_factory.mktemp("adapt")
    target = _shifted_images(tmp)
    before = tree_state(tiny_one_fold)
    out = tmp / "adapted_ws"
    # a 2-iteration model drifts fast: a limit above the default keeps the stopping rule from restoring the source
    # here (tests/adaptation/test_safeguards.py tests the rule itself)
    code = main(["adapt", "-w", str(tiny_one_fold), "-n", "tiny", "-i", str(target), "-o", str(out), "-f", "0",
                 *ADAPT_ARGS, "--max-drift", "0.5"])
    return {"code": code, "source": tiny_one_fold, "before": before, "after": tree_state(tiny_one_fold),
            "out": out, "target": target, "tmp": tmp}


def test_only_the_norm_affine_parameters_change(adapted: dict):
    assert adapted["code"] == 0
    src = torch.load(adapted["source"] / "tiny/results/3d_fullres/fold_0/checkpoint_final.pt", weights_only=True)
    new = torch.load(adapted["out"] / "tiny/results/3d_fullres/fold_0/checkpoint_final.pt", weights_only=True)
    (model,) = load_models(Workspace(adapted["source"], "tiny"), ["3d_fullres"], ["0"], "final", torch.device("cpu"))
    affine = set(norm_affine_parameters(model.networks[0]))
    assert affine and all(".weight" in k or ".bias" in k for k in affine)
    assert src["network"].keys() == new["network"].keys()
    changed = {k for k in src["network"] if not torch.equal(src["network"][k], new["network"][k])}
    assert changed and changed <= affine  # every other tensor (convs, heads) is identical
    assert "optimizer" not in new and new["adaptation"]["steps"] == 6


def test_entropy_on_the_target_goes_down(adapted: dict):
    record = json.loads((adapted["out"] / "tiny/results/3d_fullres/fold_0/adaptation.json").read_text())
    assert record["kind"] == "adaptation" and record["entropy_after"] < record["entropy_before"]
    assert len(record["loss"]) == 6 and record["source"]["sha256"].startswith("sha256:")
    assert record["target"]["cases"] == sorted(hippo_ids(8)[6:])
    # the safeguards are on by default and recorded: the balance term per step, the stopping rule's checks
    assert record["balance_weight"] > 0 and len(record["balance"]) == 6 and record["max_drift"] > 0
    assert record["classes"] == [n for n in json.loads((adapted["source"] / "tiny/dataset.json").read_text())
                                 ["labels"] if n != "background"]
    assert [c["step"] for c in record["checks"]] == [0, 6] and record["checks"][0]["fractions"] == \
        record["fractions_before"] and len(record["fractions_before"]) == len(record["classes"])
    assert record["stopped"] is None and record["kept_step"] == record["steps_run"] == 6, record["stopped"]
    # measured again here, independently of the record
    ws_src, ws_new = Workspace(adapted["source"], "tiny"), Workspace(adapted["out"], "tiny")
    cfg = load_plans(ws_src).configuration("3d_fullres")
    cases = list(prepare_target(load_dataset(ws_src), cfg, adapted["target"]).values())
    dev = torch.device("cpu")
    (m_src,) = load_models(ws_src, ["3d_fullres"], ["0"], "final", dev)
    (m_new,) = load_models(ws_new, ["3d_fullres"], ["0"], "final", dev)
    assert mean_entropy(m_new.networks[0], cases, cfg.patch_size, dev) < mean_entropy(m_src.networks[0], cases,
                                                                                        cfg.patch_size, dev)


def test_the_source_workspace_is_untouched_and_the_adapted_folder_predicts(adapted: dict):
    assert adapted["before"] == adapted["after"]
    pred = adapted["tmp"] / "pred"
    assert main(["predict", "-w", str(adapted["out"]), "-n", "tiny", "-i", str(adapted["target"]), "-o", str(pred),
                 "-f", "0", "--no-mirror", "--workers", "1"]) == 0
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in hippo_ids(8)[6:])


def test_an_existing_adapted_model_and_the_source_workspace_are_refused(adapted: dict, capsys):
    capsys.readouterr()
    args = ["-i", str(adapted["target"]), "-f", "0", *ADAPT_ARGS]
    assert main(["adapt", "-w", str(adapted["source"]), "-n", "tiny", "-o", str(adapted["out"]), *args]) == 2
    assert "an adapted model exists there" in capsys.readouterr().err
    assert main(["adapt", "-w", str(adapted["source"]), "-n", "tiny", "-o", str(adapted["source"]), *args]) == 2
    assert "the output folder is the source workspace" in capsys.readouterr().err
    assert tree_state(adapted["source"]) == adapted["before"]


def test_a_bad_target_image_is_named(tiny_one_fold: Path, tmp_path: Path, capsys):
    target = make_msd(tmp_path / "in", hippo_ids(7)[6:]) / "imagesTr"
    (target / "broken.nii.gz").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["adapt", "-w", str(tiny_one_fold), "-n", "tiny", "-i", str(target), "-o", str(tmp_path / "o"),
                 *ADAPT_ARGS]) == 2
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err
    assert not (tmp_path / "o" / "tiny" / "results").exists()  # nothing adapted, nothing written


def test_entropy_and_mirrorings_and_patches():
    p = torch.full((1, 3, 2, 2), 1 / 3)
    assert torch.allclose(voxel_entropy(p), torch.full((1, 2, 2), float(np.log(3))))
    assert torch.allclose(voxel_entropy(torch.full((1, 2, 2), 0.5), sigmoid=True), torch.full((1, 2), 2 * np.log(2)))
    assert len(all_mirrorings(3)) == 8 and all_mirrorings(3)[0] == () and len(all_mirrorings(2)) == 4
    sub = choose_mirrorings(3, 3, np.random.default_rng(0))
    assert len(sub) == 3 and sub[0] == () and len(set(sub)) == 3
    data, valid = crop_or_pad(np.ones((1, 4, 10, 3), np.float32), [6, 6, 6], np.random.default_rng(0))
    assert data.shape == (1, 6, 6, 6) and valid.sum() == 4 * 6 * 3 and data[0][valid].min() == 1


def test_adapt_network_on_a_tiny_net_leaves_convs_frozen():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                              torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 1))
    conv = net[0].weight.detach().clone()
    cases = [np.random.default_rng(1).normal(size=(1, 6, 8, 8)).astype(np.float32)]
    rep = adapt_network(net, cases, [4, 8, 8], TentSettings(steps=5, lr=0.05, max_drift=None), torch.device("cpu"))
    assert len(rep.losses) == 5 and len(rep.balance) == 5 and torch.equal(net[0].weight, conv)
    assert set(norm_affine_parameters(net)) == {"1.weight", "1.bias"}


@pytest.mark.parametrize("sigmoid", [False, True])
def test_the_one_mirroring_at_a_time_gradient_is_exact(sigmoid: bool):
    from segpipe.adaptation.tent import entropy_backward, masked_mean, mean_probabilities

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                              torch.nn.LeakyReLU(), torch.nn.Conv3d(4, 3, 3, padding=1)).double()
    x = torch.randn(2, 1, 4, 6, 5, dtype=torch.float64)
    valid = torch.rand(2, 4, 6, 5) > 0.3
    mirrorings = all_mirrorings(3)[:5]
    loss = masked_mean(voxel_entropy(mean_probabilities(net, x, mirrorings, sigmoid), sigmoid), valid)
    direct = torch.autograd.grad(loss, list(net.parameters()))
    got = entropy_backward(net, x, valid, mirrorings, sigmoid)
    assert abs(got - float(loss.detach())) < 1e-9
    for g, p in zip(direct, net.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-8, rtol=1e-6)
