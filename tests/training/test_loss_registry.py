"""Tests of the loss registry in segpipe/training/loss.py (LOSSES, choose_loss) and of the batch metadata a loss
receives (``meta``: per-level mask and level, the batch's case ids)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from segpipe import plugins
from segpipe.errors import SegpipeError
from segpipe.planning.plans import Configuration
from segpipe.training import loss as loss_module
from segpipe.training.data import CaseStore, make_batch
from segpipe.training.loss import LOSSES, DeepSupervisionLoss, DiceCELoss, choose_loss, get_loss, register_loss
from segpipe.training.trainer import Trainer, TrainSettings

plugins.load_plugins()  # installed plug-ins' losses get the same property test as segpipe's own
REGIONS = [(1, 2), (2,)]


def configuration(**extra) -> Configuration:
    """A 2D configuration (patch (8, 12), batch 2) with a tiny plain network; ``extra``: more plans.json keys."""
    doc = {"data_identifier": "2d", "spacing": [1.0, 1.0], "median_shape": [16.0, 24.0], "patch_size": [8, 12],
           "batch_size": 2, "batch_dice": False, "trainer": "default",
           "network": {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": [[3, 3]] * 3,
                       "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1],
                       "n_conv_per_stage_decoder": [1, 1]},
           "normalization": [{"channel": "MRI", "scheme": "zscore", "use_mask": False}],
           "resampling": {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
                          "coarse_axis_order": 0},
           "memory": {}, "why": {}, **extra}
    return Configuration.from_json("2d", doc)


class MetaRecorder(nn.Module):
    """Dice + CE that keeps the metadata of every call."""

    def __init__(self):
        super().__init__()
        self.inner = DiceCELoss()
        self.calls: list[dict] = []

    def forward(self, logits, target, meta=None):
        self.calls.append(dict(meta or {}))
        return self.inner(logits, target)


def test_the_in_tree_losses_are_registered_and_chosen_by_plan_trainer_and_regions():
    assert {"dice-ce", "region-dice-bce"} <= set(LOSSES)
    assert choose_loss(configuration(), None, None) == "dice-ce"
    assert choose_loss(configuration(), REGIONS, None) == "region-dice-bce"
    assert choose_loss(configuration(), None, "mine") == "mine"
    assert choose_loss(configuration(loss="planned"), None, "mine") == "planned"  # the plan's "loss" key wins
    with pytest.raises(SegpipeError, match="did you mean 'dice-ce'"):
        get_loss("dice_ce")
    with pytest.raises(SegpipeError, match="region-dice-bce"):
        get_loss("dice-ce")(configuration(), REGIONS)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_gives_a_finite_scalar_with_a_gradient(name: str):
    regions = REGIONS if "region" in name else None
    loss = get_loss(name)(configuration(), regions)
    torch.manual_seed(0)
    logits = torch.randn(2, len(regions) if regions else 3, 8, 12, requires_grad=True)
    target = torch.randint(-1, 3, (2, 1, 8, 12))
    mask = (target >= 0)
    value = loss(logits, target, {"mask": mask, "level": 0, "keys": ["a", "b"]})
    assert value.ndim == 0 and math.isfinite(float(value.detach()))
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_deep_supervision_gives_each_level_its_mask_and_passes_meta_only_to_losses_that_take_it():
    recorder = MetaRecorder()
    outputs = [torch.randn(2, 3, 8, 12), torch.randn(2, 3, 4, 6)]
    targets = [torch.randint(-1, 3, (2, 1, 8, 12)), torch.randint(-1, 3, (2, 1, 4, 6))]
    DeepSupervisionLoss(recorder, [0.5, 0.5])(outputs, targets, {"keys": ["a", "b"]})
    assert [c["level"] for c in recorder.calls] == [0, 1] and all(c["keys"] == ["a", "b"] for c in recorder.calls)
    for call, target in zip(recorder.calls, targets):
        assert call["mask"].dtype == torch.bool and torch.equal(call["mask"], target >= 0)
    plain = DeepSupervisionLoss(DiceCELoss(), [0.5, 0.5])  # a loss without meta still works
    assert torch.isfinite(plain(outputs, targets, {"keys": ["a", "b"]}))


def test_batches_carry_their_case_ids_and_the_trainer_hands_them_to_its_loss(tmp_path, monkeypatch):
    from segpipe.preprocessing.case import sample_class_locations
    from segpipe.preprocessing.store import write_case

    rng = np.random.default_rng(0)
    ids = ["case_a", "case_b"]
    for cid in ids:  # 2D cases: one slice, (c, 1, y, x)
        seg = rng.integers(0, 3, (1, 1, 16, 24)).astype(np.int16)
        write_case(tmp_path, cid, rng.normal(size=(1, 1, 16, 24)).astype(np.float32), seg,
                   {"plan_hash": "sha256:test", "class_locations": sample_class_locations(seg[0], 0)}, [1, 8, 12])
    batch = make_batch(CaseStore(tmp_path, ids), 0, seed=1, batch_size=2, patch=[8, 12], augment=False)
    assert batch["keys"].shape == (2,) and set(batch["keys"]) <= set(ids)

    monkeypatch.setattr(loss_module, "LOSSES", dict(LOSSES))
    recorder = MetaRecorder()
    register_loss("recorder")(lambda config, regions: recorder)

    class RecordingTrainer(Trainer):
        loss_name = "recorder"

    trainer = RecordingTrainer(configuration(), 1, 3, tmp_path, ids, ids, tmp_path / "out", TrainSettings(device="cpu"))
    assert trainer.loss_key == "recorder" and trainer.registry_keys()["loss"] == "recorder"
    trainer.train_step(batch, lr=0.01)
    assert recorder.calls and all(c["keys"] == list(batch["keys"]) for c in recorder.calls)
    assert [c["level"] for c in recorder.calls] == [0]  # the coarsest of the 2 levels has weight 0
