"""Tests of the STU-Net networks (segpipe/networks/stunet.py): parameter counts against the paper, widths and
blocks per stage from the preset, kernels and strides from the plan, nearest up-sampling + 1x1 conv, output
shapes, fine-tuning between data sets with other labels, and `segpipe plan --network stunet-s` end to end."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import copy_ws
from torch import nn

from segpipe.cli import main
from segpipe.io.jsonio import read_json, write_json
from segpipe.networks import NETWORKS, build_network
from segpipe.networks.stunet import STUNET_SIZES, NearestUp, STUBlock, STUNet
from segpipe.planning.plans import Topology
from segpipe.training.checkpoint import save_checkpoint
from segpipe.training.initialization import initialize_from

NAMES = ["stunet-s", "stunet-b", "stunet-l"]  # registered; stunet-h is defined but not registered
SIZES = [*NAMES, "stunet-h"]


def paper_topology(n_stages: int = 6, ndim: int = 3) -> dict:
    """The paper's 3D setting: 6 stages, 3x3x3 kernels everywhere, stride 2 on every axis after the first stage
    (the plan's features and conv counts are deliberately wrong: STU-Net must ignore them)."""
    return {"n_stages": n_stages, "features_per_stage": [7] * n_stages, "kernel_sizes": [[3] * ndim] * n_stages,
            "strides": [[1] * ndim] + [[2] * ndim] * (n_stages - 1), "n_conv_per_stage": [5] * n_stages,
            "n_conv_per_stage_decoder": [5] * (n_stages - 1)}


ANISO = {"n_stages": 4, "features_per_stage": [4, 8, 16, 32],
         "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
         "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
         "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3}
ANISO_PATCH = (4, 16, 24)  # divisible by the total stride (2, 8, 8), non-cubic so that a swapped axis shows


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _meta_network(name: str, topology: dict, in_channels: int, n_classes: int) -> nn.Module:
    """Build without allocating weights (stunet-l has 440M parameters, stunet-h 1.46G); through the registry
    for the registered sizes, directly for stunet-h."""
    with torch.device("meta"):
        if name in NETWORKS:
            return build_network({**topology, "name": name}, in_channels, n_classes)
        return STUNet(Topology.from_json(topology), STUNET_SIZES[name], in_channels, n_classes)


def expected_parameters(widths: list[int], depth: int, in_channels: int, n_classes: int, kernel_volume: int) -> int:
    """STU-Net's parameters written out from the paper's description (independent of the module code): blocks of
    two k-convs with bias and two affine norms, a 1x1 conv skip (with bias) in the first block of every stage,
    a 1x1 conv after each nearest up-sampling, a 1x1 head per decoder level."""
    def conv(i: int, o: int, kv: int) -> int:
        return i * o * kv + o

    def block(i: int, o: int, project: bool) -> int:
        return conv(i, o, kernel_volume) + conv(o, o, kernel_volume) + 4 * o + (conv(i, o, 1) if project else 0)

    def stage(i: int, o: int) -> int:
        return block(i, o, True) + (depth - 1) * block(o, o, False)

    total, channels = 0, in_channels
    for w in widths:  # encoder
        total += stage(channels, w)
        channels = w
    for below, target in zip(widths[:0:-1], widths[-2::-1]):  # decoder, coarsest level first
        total += conv(below, target, 1) + stage(2 * target, target) + conv(target, n_classes, 1)
    return total


# Huang et al. 2023, Table 1 (TotalSegmentator pre-training: 104 structures + background = 105 outputs, 1 CT channel)
PAPER_PARAMETERS = {"stunet-s": 14.6e6, "stunet-b": 58.3e6, "stunet-l": 440e6, "stunet-h": 1.4e9}
PAPER_CLASSES = 105


def test_stunet_sizes_are_registered():
    assert set(NAMES) <= set(NETWORKS) and "stunet-h" not in NETWORKS
    assert {n: (s.depth, s.channels) for n, s in STUNET_SIZES.items()} == {
        "stunet-s": (1, (16, 32, 64, 128, 256, 256)), "stunet-b": (1, (32, 64, 128, 256, 512, 512)),
        "stunet-l": (2, (64, 128, 256, 512, 1024, 1024)), "stunet-h": (3, (96, 192, 384, 768, 1536, 1536))}


@pytest.mark.parametrize("name", SIZES)
def test_parameter_counts_are_within_5_percent_of_the_papers(name: str):
    net = _meta_network(name, paper_topology(), in_channels=1, n_classes=PAPER_CLASSES)
    count = _count(net)
    assert abs(count / PAPER_PARAMETERS[name] - 1) < 0.05, f"{name}: {count / 1e6:.2f}M"
    size = STUNET_SIZES[name]
    assert count == expected_parameters(list(size.channels), size.depth, 1, PAPER_CLASSES, 27)


def test_parameter_counts_match_the_papers_table_closely():
    """The paper's table gives 58.26M (B) and 440.30M (L); the network gives these to 0.1%."""
    counts = {n: _count(_meta_network(n, paper_topology(), 1, PAPER_CLASSES)) for n in ("stunet-b", "stunet-l")}
    assert math.isclose(counts["stunet-b"], 58.26e6, rel_tol=1e-3)
    assert math.isclose(counts["stunet-l"], 440.30e6, rel_tol=1e-3)


@pytest.mark.parametrize("name", SIZES)
def test_widths_and_blocks_per_stage_come_from_the_preset_not_the_plan(name: str):
    size = STUNET_SIZES[name]
    net = _meta_network(name, paper_topology(), 1, 4)
    assert isinstance(net, STUNet) and net.widths == list(size.channels)
    for s, stage in enumerate(net.encoder.stages):
        assert len(stage) == size.depth and all(isinstance(b, STUBlock) for b in stage)
        assert stage[0].conv1[0].out_channels == size.channels[s]
        assert isinstance(stage[0].skip, nn.Conv3d) and stage[0].skip.kernel_size == (1, 1, 1)
        assert all(isinstance(b.skip, nn.Identity) for b in list(stage)[1:])
    for i, stage in enumerate(net.decoder.blocks):  # residual blocks in the decoder too, 2 * width -> width
        width = size.channels[-2 - i]
        assert len(stage) == size.depth and all(isinstance(b, STUBlock) for b in stage)
        assert stage[0].conv1[0].in_channels == 2 * width and stage[0].conv1[0].out_channels == width
    assert [h.out_channels for h in net.decoder.heads] == [4] * 5


def test_fewer_stages_take_the_first_widths_more_stages_repeat_the_last():
    four = _meta_network("stunet-b", paper_topology(4), 1, 2)
    assert four.widths == [32, 64, 128, 256] and len(four.encoder.stages) == 4 and len(four.decoder.heads) == 3
    seven = _meta_network("stunet-b", paper_topology(7), 1, 2)
    assert seven.widths == [32, 64, 128, 256, 512, 512, 512]


def test_kernels_and_strides_come_from_the_plan():
    net = _meta_network("stunet-s", ANISO, 1, 2)
    for s, stage in enumerate(net.encoder.stages):
        assert stage[0].conv1[0].kernel_size == tuple(ANISO["kernel_sizes"][s])
        assert stage[0].conv1[0].stride == tuple(ANISO["strides"][s])
        assert stage[0].skip.stride == tuple(ANISO["strides"][s])  # the strided block down-samples
    ups = list(net.decoder.ups)
    assert [u.scale for u in ups] == [(1.0, 2.0, 2.0), (2.0, 2.0, 2.0), (1.0, 2.0, 2.0)]
    count = _count(net)
    assert count != _count(_meta_network("stunet-s", {**ANISO, "kernel_sizes": [[3, 3, 3]] * 4}, 1, 2))


def test_upsampling_is_nearest_interpolation_then_a_1x1_conv():
    torch.manual_seed(0)
    net = build_network({**ANISO, "name": "stunet-s"}, 1, 2)
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in net.modules())
    up = net.decoder.ups[0]
    assert isinstance(up, NearestUp) and up.conv.kernel_size == (1, 1, 1)
    assert (up.conv.in_channels, up.conv.out_channels) == (128, 64)
    x = torch.randn(1, 128, 2, 3, 4)
    repeated = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # scale (1, 2, 2), nearest
    torch.testing.assert_close(up(x), up.conv(repeated))


def test_blocks_start_as_their_skip_and_linear_1x1_convs_keep_the_scale():
    torch.manual_seed(0)
    net = build_network({**paper_topology(4), "name": "stunet-b"}, 1, 2)
    blocks = [m for m in net.modules() if isinstance(m, STUBlock)]
    assert len(blocks) == 4 + 3 and all(torch.count_nonzero(b.norm2.weight) == 0 for b in blocks)
    linear = [b.skip for b in blocks if isinstance(b.skip, nn.Conv3d)] + [u.conv for u in net.decoder.ups]
    for c in linear:  # Kaiming with gain 1: std 1/sqrt(fan_in); He's gain sqrt(2) would give 1.41
        assert 0.85 < float(c.weight.detach().std()) * math.sqrt(c.weight[0].numel()) < 1.15
    first = blocks[0].conv1[0].weight  # the k-convs keep nnU-Net's He init (a=0.01)
    assert 1.25 < float(first.detach().std()) * math.sqrt(first[0].numel()) < 1.6


@pytest.mark.parametrize("name", ["stunet-s", "stunet-b"])
def test_output_shapes_with_and_without_deep_supervision(name: str):
    torch.manual_seed(0)
    net = build_network({**ANISO, "name": name}, in_channels=2, n_classes=3, deep_supervision=True)
    x = torch.randn(2, 2, *ANISO_PATCH)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == ANISO["n_stages"] - 1
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 4, 16, 24), (2, 3, 4, 8, 12), (2, 3, 2, 4, 6)]
    net.eval()
    with torch.no_grad():
        full = net(x)[0]
        net.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *ANISO_PATCH)
    torch.testing.assert_close(single, full)


def test_2d_topology_works():
    plan = {**paper_topology(4, ndim=2), "name": "stunet-s"}
    out = build_network(plan, 1, 2, deep_supervision=False)(torch.randn(1, 1, 16, 24))
    assert out.shape == (1, 2, 16, 24)


def _stunet_s(in_channels: int, n_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_network({**ANISO, "name": "stunet-s"}, in_channels, n_classes)


def test_a_checkpoint_initializes_a_network_for_other_labels(tmp_path: Path):
    """Pretrained with 3 classes, fine-tuned with 2: everything but the heads is loaded."""
    source = _stunet_s(1, 3, seed=0)
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint(path, {"network": source.state_dict(), "network_plan": {**ANISO, "name": "stunet-s"}})
    target = _stunet_s(1, 2, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = initialize_from(target, path)
    src, got = source.state_dict(), target.state_dict()
    heads = {k for k in got if ".heads." in k}
    assert heads and set(report["skipped"]) == heads
    assert all("3 classes in the checkpoint, 2 here" in report["skipped"][k] for k in heads)
    assert all(torch.equal(got[k], before[k]) for k in heads)
    assert set(report["loaded"]) == set(got) - heads and not report["reshaped"]
    assert all(torch.equal(got[k], src[k]) for k in report["loaded"])
    assert any(k.startswith("decoder.ups.") for k in report["loaded"])


def test_encoder_mode_loads_the_stunet_encoder_only(tmp_path: Path):
    source = _stunet_s(1, 3, seed=0)
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint(path, {"network": source.state_dict()})
    target = _stunet_s(1, 3, seed=1)
    report = initialize_from(target, path, mode="encoder")
    assert report["loaded"] and all(k.startswith("encoder.") for k in report["loaded"])
    assert len(report["loaded"]) == sum(1 for k in target.state_dict() if k.startswith("encoder."))


def test_plan_with_network_stunet_s_trains_predicts_and_fine_tunes(tiny_ws_template: Path, tmp_path: Path):
    """`segpipe plan --network stunet-s` writes a plan built with the STU-Net builder; with the tiny patch it
    trains 2 iterations, predicts, and its checkpoint initializes a stunet-s for other labels."""
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["plan", "-w", str(ws), "--network", "stunet-s"]) == 0
    plans_path = ws / "tiny" / "plans.json"
    plans = read_json(plans_path, kind="plans")
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["network"]["name"] == "stunet-s"
    with torch.device("meta"):
        planned = build_network(cfg["network"], 1, 3)
    n = cfg["network"]["n_stages"]
    assert isinstance(planned, STUNet) and planned.widths == list(STUNET_SIZES["stunet-s"].channels[:n])
    # the tiny workspace's patch and 3-stage topology, keeping the network's name: trains in seconds
    tiny = read_json(tiny_ws_template / "tiny" / "plans.json", kind="plans")["configurations"]["3d_fullres"]
    cfg.update({"patch_size": tiny["patch_size"], "batch_size": 2,
                "network": {**tiny["network"], "name": "stunet-s"}})
    write_json(plans_path, plans, kind="plans")
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 0
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
                 "--no-validation"]) == 0
    images = tmp_path / "in"
    images.mkdir()
    first = sorted((ws / "tiny" / "raw" / "imagesTr").iterdir())[0]
    shutil.copy(first, images / first.name.replace(".nii.gz", "_0000.nii.gz"))
    out = tmp_path / "pred"
    assert main(["predict", "-w", str(ws), "-i", str(images), "-o", str(out), "--config", "3d_fullres",
                 "--folds", "0", "--workers", "1", "--device", "cpu", "--no-mirror"]) == 0
    assert [p.name for p in out.iterdir()] == [first.name]
    ckpt = ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    target = build_network({**tiny["network"], "name": "stunet-s"}, 1, 2)
    report = initialize_from(target, ckpt)
    assert report["source_plan"]["name"] == "stunet-s"
    assert set(report["skipped"]) == {k for k in target.state_dict() if ".heads." in k}
