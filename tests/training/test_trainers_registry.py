"""Properties every registered trainer (segpipe/training/trainer.py, TRAINERS) must have; a newly registered
trainer is tested here automatically.

Trainers are looked up by name (``segpipe train --trainer NAME`` or a configuration's ``trainer``), constructed as
``cls(config, n_channels, n_classes, preprocessed, train_ids, val_ids, out_dir, settings)`` by
segpipe/training/run.py, and driven through ``run``; these tests use the pieces of that interface a variant may
override (``train_step``, ``transforms_enabled``, checkpoints) on a tiny network and synthetic batches.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe import plugins
from segpipe.errors import SegpipeError
from segpipe.planning.plans import Configuration
from segpipe.training.trainer import TRAINERS, Trainer, TrainSettings, get_trainer

plugins.load_plugins()  # installed plug-ins' trainers get the same property tests as segpipe's own
NAMES = sorted(TRAINERS)
# (network topology, patch (y, x) / (z, y, x) voxels divisible by the total stride (4, 4) / (2, 4, 4))
TINY = {
    "2d": ({"n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": [[3, 3]] * 3,
            "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]},
           [8, 12]),
    "3d": ({"n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1]},
           [4, 8, 12]),
}
N_CLASSES = 3


def _configuration(name: str, dim: str) -> Configuration:
    """A planned configuration (as plans.json holds it) with a tiny network, batch 2, trained by ``name``."""
    topology, patch = TINY[dim]
    doc = {"data_identifier": dim, "spacing": [1.0] * len(patch), "median_shape": [float(2 * p) for p in patch],
           "patch_size": patch, "batch_size": 2, "batch_dice": False, "trainer": name,
           "network": {"name": "plain", **topology},
           "normalization": [{"channel": "MRI", "scheme": "zscore", "use_mask": False}],
           "resampling": {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
                          "coarse_axis_order": 0},
           "memory": {}, "why": {}}
    return Configuration.from_json("2d" if dim == "2d" else "3d_fullres", doc)


def _trainer(name: str, dim: str, tmp_path: Path, **settings) -> Trainer:
    return get_trainer(name)(_configuration(name, dim), 1, N_CLASSES, tmp_path / "preprocessed", ["a", "b"], ["c"],
                             tmp_path / "out", TrainSettings(device="cpu", **settings))


def _batch(patch: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """``{"data": (2, 1, *patch) float32, "seg": (2, 1, *patch) int16}``: the label is readable from the image."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, N_CLASSES, (2, 1, *patch)).astype(np.int16)
    data = (seg * 2.0 + rng.normal(0, 0.1, seg.shape)).astype(np.float32)
    return {"data": data, "seg": seg}


@pytest.mark.parametrize("name", NAMES)
def test_every_trainer_name_resolves_to_a_trainer_class(name: str):
    cls = get_trainer(name)
    assert cls is TRAINERS[name] and issubclass(cls, Trainer)
    for hook in ("run", "train_step", "validate_patches", "transforms_enabled", "checkpoint_state", "load", "save"):
        assert callable(getattr(cls, hook, None)), hook


def test_unknown_trainer_name_suggests_the_closest_and_lists_all():
    with pytest.raises(SegpipeError) as e:
        get_trainer("defualt")
    msg = e.value.format()
    assert "did you mean 'default'" in msg and all(n in msg for n in NAMES)


@pytest.mark.parametrize("dim", sorted(TINY))
@pytest.mark.parametrize("name", NAMES)
def test_every_trainer_builds_its_network_and_learns_from_a_batch(name: str, dim: str, tmp_path: Path):
    trainer = _trainer(name, dim, tmp_path)
    patch = TINY[dim][1]
    assert trainer.patch == patch and trainer.batch_size == 2
    batch = _batch(patch)
    with torch.no_grad():
        outputs = trainer.network(torch.from_numpy(batch["data"]))
    assert outputs[0].shape == (2, N_CLASSES, *patch)  # deep supervision: full resolution first
    before = [p.detach().clone() for p in trainer.network.parameters()]
    losses = [trainer.train_step(batch, lr=0.01) for _ in range(6)]
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))
    assert min(losses[-3:]) < losses[0]  # the same batch again: the loss goes down


@pytest.mark.parametrize("name", NAMES)
def test_every_trainer_augments_only_when_allowed(name: str, tmp_path: Path):
    assert isinstance(_trainer(name, "2d", tmp_path / "on").transforms_enabled(), bool)
    assert _trainer(name, "2d", tmp_path / "off", augment=False).transforms_enabled() is False


@pytest.mark.parametrize("name", NAMES)
def test_every_trainer_checkpoint_restores_its_weights(name: str, tmp_path: Path):
    trainer = _trainer(name, "3d", tmp_path)
    trainer.train_step(_batch(TINY["3d"][1]), lr=0.01)
    state = trainer.checkpoint_state()
    assert state["n_channels"] == 1 and state["n_classes"] == N_CLASSES and list(state["patch_size"]) == [4, 8, 12]
    trainer.save("checkpoint_test.pt")
    fresh = _trainer(name, "3d", tmp_path)  # the same seed: the same initial weights, before the step
    fresh.load(tmp_path / "out" / "checkpoint_test.pt")
    for (k, a), b in zip(trainer.network.state_dict().items(), fresh.network.state_dict().values()):
        assert torch.equal(a, b), k
