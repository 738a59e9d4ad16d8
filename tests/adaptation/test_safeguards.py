"""The safeguards of `segpipe adapt` against collapse, on a small synthetic model whose plain TENT adaptation removes
the foreground: the class-balance term keeps the predicted foreground fraction, the stopping rule fires and
restores the last parameters that passed (proved against identical shorter runs), the gradient of the balance term
is exact, the flags parse with the library's defaults, and bad settings are refused naming the flag to fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segpipe.adaptation.tent import (
    BALANCE_WEIGHT,
    CHECK_EVERY,
    MAX_DRIFT,
    TentSettings,
    adapt_network,
    all_mirrorings,
    balance_kl,
    class_distribution,
    masked_mean,
    mean_probabilities,
    monitor_patches,
    objective_backward,
    predicted_fractions,
    voxel_entropy,
)
from segpipe.cli import build_parser, main

CPU = torch.device("cpu")
PATCH = [8, 16, 16]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is fastest, and spinning threads on a shared CPU are very slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def threshold_net() -> nn.Module:
    """A 2-class network predicting foreground where the patch-normalized input exceeds 1.5 (about 7% of the
    voxels of Gaussian noise): an imbalanced segmentation whose decision boundary lies in the tail of the intensity
    distribution, where entropy minimisation moves it outwards (fewer uncertain voxels) until no foreground is
    left."""
    net = nn.Sequential(nn.Conv3d(1, 1, 1, bias=False), nn.InstanceNorm3d(1, affine=True), nn.Conv3d(1, 2, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.copy_(torch.tensor([-2.0, 2.0]).view(2, 1, 1, 1, 1))
        net[2].bias.copy_(torch.tensor([3.0, -3.0]))
    return net


def noise_cases() -> list[np.ndarray]:
    return [np.random.default_rng(i).normal(size=(1, *PATCH)).astype(np.float32) for i in range(2)]


def foreground(net: nn.Module) -> float:
    (f,) = predicted_fractions(net, monitor_patches(noise_cases(), PATCH, CPU))
    return f


def adapt(settings: TentSettings) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    net = threshold_net()
    return net, adapt_network(net, noise_cases(), PATCH, settings, CPU, class_names=["blob"])


def affine(net: nn.Module) -> list[torch.Tensor]:
    return [net[1].weight.detach().clone(), net[1].bias.detach().clone()]


def test_the_balance_term_keeps_the_foreground_that_plain_entropy_minimisation_removes():
    before = foreground(threshold_net())
    assert 0.04 < before < 0.10
    plain_net, plain = adapt(TentSettings(steps=40, lr=0.05, balance_weight=0.0, max_drift=None))
    balanced_net, balanced = adapt(TentSettings(steps=40, lr=0.05, max_drift=None))  # the default weight
    assert BALANCE_WEIGHT > 0 and TentSettings().balance_weight == BALANCE_WEIGHT
    # both lower the entropy; plain TENT by emptying the foreground, the balanced run keeps it
    assert plain.losses[-1] < plain.losses[0] and balanced.losses[-1] < balanced.losses[0]
    assert foreground(plain_net) < 0.2 * before
    assert abs(foreground(balanced_net) / before - 1) < 0.25
    # the balance term (KL to the source's class distribution on the batch) is recorded per step: 0 at the start
    # (the network is the source), small throughout; plain TENT has none to record
    assert len(balanced.balance) == 40 and balanced.balance[0] < 1e-6 and max(balanced.balance) < 0.05
    assert plain.balance == []


def test_the_stopping_rule_fires_and_restores_the_last_parameters_that_passed():
    settings = TentSettings(steps=30, lr=0.01, balance_weight=0.0, max_drift=0.15, check_every=2)
    net, rep = adapt(settings)
    stop = rep.stopped
    assert stop is not None, "plain TENT on this model must trip the stopping rule"
    assert stop["step"] < settings.steps and len(rep.losses) == stop["step"] and stop["class"] == "blob"
    assert abs(stop["drift"]) > settings.max_drift and stop["limit"] == settings.max_drift
    assert "stopped at step" in stop["message"] and "blob" in stop["message"]
    assert [c["passed"] for c in rep.checks] == [True] * (len(rep.checks) - 1) + [False]
    kept = rep.kept_step
    assert kept == stop["restored_step"] == rep.checks[-2]["step"] and kept > 0  # a later check failed
    # the network holds exactly the parameters of step `kept`: the same run stopped there by its step count ...
    same, _ = adapt(TentSettings(steps=kept, lr=0.01, balance_weight=0.0, max_drift=None))
    assert all(torch.equal(a, b) for a, b in zip(affine(net), affine(same)))
    # ... and not those of the step that failed the check
    failed, _ = adapt(TentSettings(steps=stop["step"], lr=0.01, balance_weight=0.0, max_drift=None))
    assert not all(torch.equal(a, b) for a, b in zip(affine(net), affine(failed)))
    assert abs(foreground(net) / foreground(threshold_net()) - 1) <= settings.max_drift
    assert rep.fractions_after == pytest.approx([foreground(net)])


def test_a_stop_at_the_first_check_restores_the_source():
    net, rep = adapt(TentSettings(steps=20, lr=0.05, balance_weight=0.0, max_drift=0.15, check_every=5))
    assert rep.stopped is not None and rep.stopped["step"] == 5 and rep.kept_step == 0
    assert "(the source's)" in rep.stopped["message"]
    assert all(torch.equal(a, b) for a, b in zip(affine(net), affine(threshold_net())))


def test_without_drift_the_rule_lets_every_step_run():
    net, rep = adapt(TentSettings(steps=8, lr=1e-4, max_drift=0.15, check_every=3))
    assert rep.stopped is None and rep.kept_step == 8 and len(rep.losses) == 8
    assert [c["step"] for c in rep.checks] == [0, 3, 6, 8]  # and the last step is always checked


@pytest.mark.parametrize("sigmoid", [False, True])
def test_the_gradient_of_entropy_plus_balance_is_exact(sigmoid: bool):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                        nn.Conv3d(4, 3, 3, padding=1)).double()
    x = torch.randn(2, 1, 4, 6, 5, dtype=torch.float64)
    valid = torch.rand(2, 4, 6, 5) > 0.3
    mirrorings = all_mirrorings(3)[:3]
    prior = torch.tensor([0.7, 0.2, 0.1] if not sigmoid else [0.3, 0.2, 0.6], dtype=torch.float64)
    p = mean_probabilities(net, x, mirrorings, sigmoid)
    entropy = masked_mean(voxel_entropy(p, sigmoid), valid)
    balance = balance_kl(class_distribution(p, valid), prior, sigmoid)
    direct = torch.autograd.grad(entropy + 2.5 * balance, list(net.parameters()))
    got = objective_backward(net, x, valid, mirrorings, sigmoid, prior=prior, balance_weight=2.5)
    assert got == pytest.approx((float(entropy.detach()), float(balance.detach())), abs=1e-9)
    assert float(balance.detach()) > 0.01  # the term is not trivially zero here
    for g, par in zip(direct, net.parameters()):
        assert torch.allclose(g, par.grad, atol=1e-8, rtol=1e-6)
    assert float(balance_kl(prior, prior, sigmoid)) == pytest.approx(0.0, abs=1e-12)


def test_the_flags_parse_with_the_library_defaults():
    base = ["adapt", "-w", "W", "-n", "N", "-i", "IN", "-o", "OUT"]
    a = build_parser().parse_args(base)
    assert (a.balance_weight, a.max_drift, a.check_every, a.no_stop) == (BALANCE_WEIGHT, MAX_DRIFT, CHECK_EVERY,
                                                                         False)
    default = TentSettings()
    assert (a.steps, a.lr, a.patches) == (default.steps, default.lr, default.patches)
    a = build_parser().parse_args([*base, "--balance-weight", "0", "--max-drift", "0.3", "--check-every", "5",
                                   "--no-stop"])
    assert (a.balance_weight, a.max_drift, a.check_every, a.no_stop) == (0.0, 0.3, 5, True)


@pytest.mark.parametrize("flags, named", [(["--max-drift", "-0.1"], "--max-drift"),
                                          (["--balance-weight", "-1"], "--balance-weight"),
                                          (["--check-every", "0"], "--check-every")])
def test_bad_settings_are_refused_naming_the_flag(flags: list[str], named: str, tmp_path: Path, capsys):
    """Refused before anything is read: the workspace need not hold a model (only a data set)."""
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "d" / "dataset.json").write_text(json.dumps({"name": "d"}))
    capsys.readouterr()
    assert main(["adapt", "-w", str(ws), "-n", "d", "-i", str(tmp_path), "-o", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert "invalid adaptation settings" in err and named in err
    others = {"--max-drift", "--balance-weight", "--check-every"} - {named}
    assert not any(o in err for o in others), err  # the fix names the flag at fault, not a list of all of them
    assert not (tmp_path / "o").exists()


def test_a_missing_workspace_names_the_file_and_the_fix(tmp_path: Path, capsys):
    capsys.readouterr()
    assert main(["adapt", "-w", str(tmp_path / "nowhere"), "-n", "d", "-i", str(tmp_path), "-o",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and "segpipe onboard" in err
