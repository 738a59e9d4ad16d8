"""predict --uncertainty: entropy and mutual information over mirrorings and folds, and a score per case."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hippo_ids, make_msd

from segpipe.cli import main
from segpipe.inference.sliding_window import predict_sliding_window
from segpipe.inference.uncertainty import (
    SUMMARY_NAME,
    case_scores,
    decompose,
    entropy,
    export_uncertainty,
    max_entropy,
    region_of_interest,
    uncertainty_paths,
)
from segpipe.io.images import Geometry, read_image, write_image
from segpipe.io.jsonio import read_json

# --- the math on hand-made probabilities ------------------------------------------------------------------------


def _random_members(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Softmax probabilities (n_members, n_classes, *spatial) from random logits."""
    return torch.softmax(torch.from_numpy(rng.normal(0, 3, shape).astype(np.float32)), dim=1)


def test_entropy_of_uniform_and_certain_probabilities():
    uniform = torch.full((4, 5), 0.25)
    torch.testing.assert_close(entropy(uniform), torch.full((5,), math.log(4)))
    one_hot = torch.zeros(3, 5)
    one_hot[1] = 1
    assert torch.equal(entropy(one_hot), torch.zeros(5))  # 0 log 0 = 0, no NaN
    assert max_entropy(4) == pytest.approx(math.log(4))


def test_binary_entropy_is_summed_over_regions():
    p = torch.tensor([[0.5, 0.0, 1.0], [0.5, 0.5, 0.2]])  # (regions, voxels)
    h = entropy(p, binary=True)
    b = -(0.2 * math.log(0.2) + 0.8 * math.log(0.8))
    torch.testing.assert_close(h, torch.tensor([2 * math.log(2), math.log(2), b]))
    assert max_entropy(2, binary=True) == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("binary", [False, True])
def test_mutual_information_is_not_negative(binary: bool):
    rng = np.random.default_rng(0)
    members = _random_members(rng, (6, 3, 4, 5, 7))
    if binary:
        members = torch.sigmoid(torch.from_numpy(rng.normal(0, 3, (6, 3, 4, 5, 7)).astype(np.float32)))
    total, expected, mi = decompose(members, binary=binary)
    assert total.shape == expected.shape == mi.shape == (4, 5, 7)
    assert torch.all(total - expected >= -1e-5)  # Jensen, before the clamp
    assert torch.all(mi >= 0) and torch.all(mi <= total + 1e-6)
    assert mi.max() > 0.05  # random members do disagree


def test_mutual_information_is_zero_when_members_agree():
    member = _random_members(np.random.default_rng(1), (1, 3, 4, 4))
    total, expected, mi = decompose(member.expand(5, -1, -1, -1))
    torch.testing.assert_close(total, expected)
    assert torch.all(mi < 1e-6) and total.mean() > 0.1  # unsure, but every member equally so


def test_mutual_information_is_the_entropy_when_sure_members_disagree():
    # 4 members, each one-hot (sure), voting 2:1:1 for three classes at every voxel
    votes = torch.tensor([0, 0, 1, 2])
    members = torch.nn.functional.one_hot(votes, 3).float()[:, :, None, None].expand(4, 3, 2, 3)
    total, expected, mi = decompose(members)
    assert torch.equal(expected, torch.zeros(2, 3))
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    torch.testing.assert_close(total, torch.full((2, 3), h))
    torch.testing.assert_close(mi, total)


# --- the streamed computation in the sliding window -------------------------------------------------------------

def _net(in_ch: int, out_ch: int, conv: type = torch.nn.Conv3d) -> torch.nn.Module:
    torch.manual_seed(0)
    net = conv(in_ch, out_ch, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(20)  # confident and mirror-sensitive enough for the members to differ
    return net.eval()


def test_sliding_window_expected_entropy_equals_the_members_reference():
    """One window covering the case: the streamed E H[p] over 8 mirrorings x 2 networks is the in-memory
    reference, and the probabilities are the same as without ``entropy_out``."""
    nets = [_net(1, 3), _net(1, 3)]
    with torch.no_grad():
        nets[1].weight.mul_(-0.5)
    data = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 6, 8, 10)).astype(np.float32))
    axes = (0, 1, 2)
    ent = torch.empty(6, 8, 10)
    probs = predict_sliding_window(nets, data, (6, 8, 10), 3, mirror_axes=axes, entropy_out=ent)
    plain = predict_sliding_window(nets, data, (6, 8, 10), 3, mirror_axes=axes)
    assert torch.equal(probs, plain)
    members = []
    with torch.no_grad():
        for net in nets:
            for dims in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
                x = torch.flip(data[None], dims) if dims else data[None]
                p = torch.softmax(net(x), dim=1)
                members.append((torch.flip(p, dims) if dims else p)[0])
    total, expected, _ = decompose(torch.stack(members))
    torch.testing.assert_close(ent, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entropy(probs), total, atol=1e-5, rtol=1e-4)
    assert (total - expected).max() > 0.01  # the members disagree somewhere


@pytest.mark.parametrize("sigmoid", [False, True])
def test_sliding_window_entropy_with_overlapping_windows_2d_and_regions(sigmoid: bool):
    """Overlapping windows, a 2D network over slices, region (sigmoid) outputs: MI = H[E p] - E H[p] >= 0."""
    net = _net(1, 2, torch.nn.Conv2d)
    data = np.random.default_rng(3).normal(size=(1, 3, 20, 17)).astype(np.float32)
    ent = torch.empty(3, 20, 17)
    probs = predict_sliding_window(net, data, (8, 8), 2, mirror_axes=(0, 1), sigmoid=sigmoid, entropy_out=ent)
    total = entropy(probs, binary=sigmoid)
    assert torch.all(ent >= 0) and torch.all(total - ent >= -1e-5)
    assert ent.max() <= max_entropy(2, binary=sigmoid) + 1e-5
    assert torch.equal(probs, predict_sliding_window(net, data, (8, 8), 2, mirror_axes=(0, 1), sigmoid=sigmoid))


def test_sliding_window_refuses_a_wrong_entropy_volume():
    with pytest.raises(ValueError, match="entropy_out"):
        predict_sliding_window(_net(1, 2), np.zeros((1, 4, 4, 4), np.float32), (4, 4, 4), 2,
                               entropy_out=torch.empty(4, 4, 5))


# --- export and scores ------------------------------------------------------------------------------------------

def _props(crop_box: list[list[int]], full: tuple[int, int, int]) -> dict:
    crop = [b - a for a, b in crop_box]
    return {"case": "c", "shape_before_crop": list(full), "shape_after_crop": crop, "crop_bbox": crop_box,
            "shape_after_resampling": crop, "spacing": [1.0, 1.0, 1.0], "target_spacing": [1.0, 1.0, 1.0],
            "ndim": 3, "geometry": {"shape": list(full), "spacing": [2.0, 1.0, 1.0], "origin": [1.0, 2.0, 3.0],
                                    "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}}


def test_export_uncertainty_of_two_disagreeing_configurations(tmp_path: Path):
    """Two sure configurations that disagree everywhere in the crop: entropy = MI = log 2 there, 0 outside
    (background for sure), written with the label map's geometry; the score is taken over the region."""
    full, box = (5, 6, 7), [[1, 4], [0, 6], [2, 5]]
    crop = tuple(b - a for a, b in box)
    props = _props(box, full)
    a = torch.zeros((3,) + crop)
    a[1] = 1
    b = torch.zeros((3,) + crop)
    b[2] = 1
    out = tmp_path / "case.nii.gz"
    geo = Geometry.from_dict(props["geometry"])
    seg = np.zeros(full, np.uint8)
    seg[1:4, :, 2:5] = 1
    scores = export_uncertainty([(a, props), (b.numpy(), props)], [torch.zeros(crop), np.zeros(crop, np.float32)],
                                out, geo, seg)
    ent_path, mi_path = uncertainty_paths(out)
    assert (ent_path.name, mi_path.name) == ("case_entropy.nii.gz", "case_mutual_information.nii.gz")
    inside = tuple(slice(x, y) for x, y in box)
    for path in (ent_path, mi_path):
        arr, g = read_image(path)
        assert arr.dtype == np.float32 and g.shape == full and g.spacing == geo.spacing
        assert g.origin == geo.origin and g.direction == geo.direction
        np.testing.assert_allclose(arr[inside], math.log(2), rtol=1e-6)
        outside = np.ones(full, bool)
        outside[inside] = False
        assert np.all(arr[outside] == 0)
    assert scores["foreground_voxels"] == 54 and scores["region_voxels"] > 54  # the crop and its rim
    assert scores["score"] == pytest.approx(math.log(2) * 54 / scores["region_voxels"], rel=1e-5)
    assert scores["mean_mutual_information_region"] == pytest.approx(scores["score"])
    assert scores["mean_entropy_image"] == pytest.approx(math.log(2) * 54 / (5 * 6 * 7), rel=1e-5)


def test_export_uncertainty_of_a_2d_png_case(tmp_path: Path):
    """2D data (a singleton Z axis in preprocessing): (y, x) maps, as float32 TIFF next to a PNG label map."""
    props = _props([[0, 1], [1, 5], [0, 6]], (1, 6, 6))
    props.update(ndim=2, geometry={"shape": [6, 6], "spacing": [0.5, 0.5], "origin": [0.0, 0.0],
                                   "direction": [1.0, 0.0, 0.0, 1.0]})
    probs = torch.full((2, 1, 4, 6), 0.5)
    seg = np.zeros((6, 6), np.uint8)
    scores = export_uncertainty([(probs, props)], [torch.full((1, 4, 6), 0.25)], tmp_path / "c.png",
                                props["geometry"], seg)
    ent, g = read_image(tmp_path / "c_entropy.tif")
    mi, _ = read_image(tmp_path / "c_mutual_information.tif")
    assert ent.shape == mi.shape == (6, 6) and g.shape == (6, 6) and ent.dtype == np.float32
    np.testing.assert_allclose(ent[1:5], math.log(2), rtol=1e-6)
    np.testing.assert_allclose(mi[1:5], math.log(2) - 0.25, rtol=1e-6)
    assert np.all(ent[[0, 5]] == 0) and scores["region_voxels"] == 24  # no foreground: the unsure voxels


def test_region_of_interest_and_scores():
    h = np.zeros((3, 9, 9), np.float32)
    label = np.zeros((3, 9, 9), np.uint8)
    assert not region_of_interest(h, label, math.log(3)).any()
    assert case_scores(h, h, label, math.log(3))["score"] == 0.0  # sure of nothing: 0, not NaN
    label[1, 4, 4] = 1
    roi = region_of_interest(h, label, math.log(3))
    assert roi[1, 4, 4] and roi[1, 4, 6] and roi[0, 4, 5] and not roi[1, 4, 7] and not roi[1, 0, 0]
    h[2, 0, 0] = 0.9 * math.log(3)  # unsure far from the structure: in the region
    h[2, 8, 8] = 0.1 * math.log(3)  # a little unsure far away: not
    roi = region_of_interest(h, label, math.log(3))
    assert roi[2, 0, 0] and not roi[2, 8, 8]
    s = case_scores(h, h / 2, label, math.log(3))
    assert s["score"] == pytest.approx(0.9 * math.log(3) / roi.sum(), rel=1e-5)
    assert s["mean_mutual_information_region"] == pytest.approx(s["score"] / 2, rel=1e-5)


# --- predict --uncertainty from the command line ----------------------------------------------------------------

def _noise_case(src: Path, dst: Path, seed: int) -> None:
    """A Gaussian noise volume with ``src``'s geometry (a hippocampus MRI's size and spacing)."""
    arr, geo = read_image(src)
    rng = np.random.default_rng(seed)
    noise = rng.normal(float(arr.mean()), float(arr.std()) + 1.0, arr.shape).astype(np.float32)
    write_image(noise, geo, dst)


@pytest.fixture(scope="module")
def predicted(tiny_one_fold: Path, tmp_path_factory) -> dict[str, Path]:
    """Two held-out hippocampus cases and one noise volume, predicted with and without --uncertainty."""
    root = tmp_path_factory.mktemp("unc")
    images = make_msd(root / "in", hippo_ids(8)[6:]) / "imagesTr"
    _noise_case(images / f"{hippo_ids(8)[6]}.nii.gz", images / "noise_000.nii.gz", 0)
    base = ["predict", "-w", str(tiny_one_fold), "-i", str(images), "-f", "0", "--workers", "1"]
    with_u, without = root / "with", root / "without"
    assert main([*base, "-o", str(with_u), "--uncertainty"]) == 0
    assert main([*base, "-o", str(without)]) == 0
    return {"images": images, "with": with_u, "without": without}


def test_uncertainty_maps_have_the_prediction_geometry(predicted: dict[str, Path]):
    cases = [*hippo_ids(8)[6:], "noise_000"]
    for cid in cases:
        seg, g = read_image(predicted["with"] / f"{cid}.nii.gz")
        ent, g_ent = read_image(predicted["with"] / f"{cid}_entropy.nii.gz")
        mi, g_mi = read_image(predicted["with"] / f"{cid}_mutual_information.nii.gz")
        for arr, geo in ((ent, g_ent), (mi, g_mi)):
            assert arr.dtype == np.float32 and arr.shape == seg.shape
            assert (geo.shape, geo.spacing, geo.origin, geo.direction) == (g.shape, g.spacing, g.origin, g.direction)
        assert np.all(mi >= 0) and np.all(mi <= ent + 1e-5) and ent.max() <= math.log(3) + 1e-5
        assert ent.max() > 0  # the 2-iteration model is far from sure
        same, _ = read_image(predicted["without"] / f"{cid}.nii.gz")
        assert np.array_equal(seg, same)  # --uncertainty does not change the label maps


def test_uncertainty_json_scores_every_case(predicted: dict[str, Path]):
    doc = read_json(predicted["with"] / SUMMARY_NAME, kind="uncertainty")
    assert set(doc["cases"]) == {*hippo_ids(8)[6:], "noise_000"} and doc["n_cases"] == 3
    assert doc["members"] == {"3d_fullres": {"folds": ["0"], "mirrorings": 8, "members": 8}}
    assert doc["max_entropy"] == pytest.approx(math.log(3)) and doc["units"] == "nats"
    for scores in doc["cases"].values():
        assert 0 < scores["score"] <= math.log(3)
        assert 0 <= scores["mean_mutual_information_region"] <= scores["mean_entropy_region"]
        assert 0 < scores["mean_entropy_image"] <= scores["score"] or scores["foreground_voxels"] == 0


def test_without_the_flag_nothing_changes(predicted: dict[str, Path], tiny_one_fold: Path, tmp_path: Path,
                                          monkeypatch):
    """No extra files, and no entropy is computed at all (the sliding window's member loop is the plain one)."""
    names = {p.name for p in predicted["without"].iterdir()}
    assert names == {f"{c}.nii.gz" for c in [*hippo_ids(8)[6:], "noise_000"]}

    import segpipe.inference.sliding_window as sw

    def refuse(*args, **kwargs):
        raise AssertionError("entropy computed without --uncertainty")

    monkeypatch.setattr(sw, "entropy", refuse)
    out = tmp_path / "plain"
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(predicted["images"]), "-o", str(out), "-f", "0",
                 "--workers", "1"]) == 0
    assert not (out / SUMMARY_NAME).exists()


def test_an_unsure_case_scores_higher_than_a_sure_one_of_any_field_of_view():
    """The score's design, on hand-made maps (the tiny test model is too close to uniform everywhere to tell a
    noise volume from an image; docs/benchmarks.md measures it with a trained model): a sure structure with an
    unsure rim scores the same in a larger field of view (the whole-image mean does not), and a noise-like case
    (unsure speckle everywhere, a few scattered foreground voxels) scores far higher."""
    h_max = math.log(3)
    label = np.zeros((12, 16, 16), np.uint8)
    label[3:9, 4:12, 4:12] = 1
    rim = np.asarray(region_of_interest(np.zeros(label.shape, np.float32), label, h_max)) & (label == 0)
    h = np.where(rim, 0.3 * h_max, 0.0).astype(np.float32)
    sure = case_scores(h, h / 4, label, h_max)
    big_label, big_h = np.pad(label, 8), np.pad(h, 8)
    sure_big = case_scores(big_h, big_h / 4, big_label, h_max)
    assert sure_big["score"] == pytest.approx(sure["score"])
    assert sure_big["mean_entropy_image"] < sure["mean_entropy_image"] / 2
    rng = np.random.default_rng(4)
    noise_h = (rng.uniform(0.2, 0.9, label.shape) * h_max).astype(np.float32)
    noise_label = (rng.uniform(size=label.shape) > 0.98).astype(np.uint8)
    noisy = case_scores(noise_h, noise_h / 4, noise_label, h_max)
    assert noisy["score"] > 3 * sure["score"]
