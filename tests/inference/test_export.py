"""Tests of segpipe/inference/export.py: probabilities resampled back, un-cropped and written with the raw
geometry, on a real hippocampus case (3D NIfTI, the shipped example data) and an HC18-like fetal head mask (2D RGB
0/255 PNG, synthetic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import hippo_file, hippo_ids, make_hc18_like

from segpipe.inference.export import export_label_map, probabilities_path, probabilities_to_original
from segpipe.io.images import read_image
from segpipe.preprocessing.resampling import resample_image


def one_hot(label: np.ndarray, n: int) -> np.ndarray:
    return (label[None] == np.arange(n).reshape((n,) + (1,) * label.ndim)).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def hippo_case():
    cid = hippo_ids(1)[0]
    label, geo = read_image(hippo_file(cid, "labelsTr"))
    # crop a few voxels off each side that hold no foreground
    fg = np.argwhere(label > 0)
    lo = np.maximum(fg.min(0) - 1, 0)
    hi = np.minimum(fg.max(0) + 2, label.shape)
    lo = np.minimum(lo, 3)  # at most 3 voxels off the low side, at least 0
    bbox = [[int(a), int(b)] for a, b in zip(lo, hi)]
    cropped = label[tuple(slice(a, b) for a, b in bbox)]
    target = [1.5, 0.8, 1.0]
    probs = resample_image(one_hot(cropped, 3), geo.spacing, target, order=1)
    props = {"case": cid, "ndim": 3, "geometry": geo.to_dict(), "crop_bbox": bbox,
             "shape_before_crop": list(label.shape), "shape_after_crop": list(cropped.shape),
             "spacing": list(geo.spacing), "target_spacing": target,
             "shape_after_resampling": list(probs.shape[1:]), "class_locations": {}, "config": "3d_fullres"}
    return label, geo, probs, props


def test_round_trip_hippocampus(tmp_path):
    label, geo, probs, props = hippo_case()
    assert probs.shape[1:] != tuple(props["shape_after_crop"])  # really resampled
    assert any(a > 0 or b < s for (a, b), s in zip(props["crop_bbox"], label.shape))  # really cropped
    out = tmp_path / "pred" / f"{props['case']}.nii.gz"
    seg = export_label_map(torch.from_numpy(probs), props, out, save_probabilities=True)
    assert seg.dtype == np.uint8 and seg.shape == label.shape

    back, back_geo = read_image(out)
    assert back_geo.shape == geo.shape and back_geo.spacing == geo.spacing
    assert back_geo.origin == geo.origin and back_geo.direction == geo.direction
    assert np.array_equal(back, seg)
    for c in (1, 2):
        assert dice(back == c, label == c) > 0.9, c
    inside = np.zeros(label.shape, bool)
    inside[tuple(slice(a, b) for a, b in props["crop_bbox"])] = True
    assert (back[~inside] == 0).all()

    npz = tmp_path / "pred" / f"{props['case']}.npz"
    assert probabilities_path(out) == npz
    with np.load(npz) as f:
        p = f["probabilities"]
    assert p.dtype == np.float16 and p.shape == (3,) + label.shape
    assert np.allclose(p.astype(np.float32).sum(0), 1, atol=5e-3)
    assert not [q for q in out.parent.iterdir() if q.name.startswith(".tmp-")]


def test_probabilities_to_original_background_outside_crop():
    label, geo, probs, props = hippo_case()
    full = probabilities_to_original(probs, props)
    assert full.shape == (3,) + label.shape and full.dtype == np.float32
    assert np.allclose(full.sum(0), 1, atol=1e-5)
    inside = np.zeros(label.shape, bool)
    inside[tuple(slice(a, b) for a, b in props["crop_bbox"])] = True
    assert (full[0][~inside] == 1).all() and (full[1:, ~inside] == 0).all()
    with pytest.raises(ValueError):
        probabilities_to_original(probs[:, :-1], props)


def test_export_2d_png(tmp_path):
    mask_path = make_hc18_like(tmp_path / "hc18", ["000_HC"]).label_files["000_HC"]
    raw, geo = read_image(mask_path)
    mask = (raw[0] if raw.ndim == 3 else raw) > 0  # RGB PNG: components first
    assert mask.shape == (540, 800)
    bbox = [[0, 1], [10, 530], [5, 790]]
    cropped = mask[None, 10:530, 5:790].astype(np.int64)  # internal 3D, Z = 1
    assert cropped.sum() == mask.sum()
    spacing, target = [999.0, 1.0, 1.0], [999.0, 2.0, 2.0]
    probs = resample_image(one_hot(cropped, 2), spacing, target, order=1)
    props = {"case": "000_HC", "ndim": 2, "geometry": {**geo.to_dict()}, "crop_bbox": bbox,
             "shape_before_crop": [1, 540, 800], "shape_after_crop": list(cropped.shape), "spacing": spacing,
             "target_spacing": target, "shape_after_resampling": list(probs.shape[1:]), "class_locations": {},
             "config": "2d"}
    assert probs.shape == (2, 1, 260, 392)
    out = tmp_path / "000_HC.png"
    seg = export_label_map(probs, props, out)
    back, back_geo = read_image(out)
    assert back.shape == (540, 800) == mask.shape and seg.shape == (540, 800)
    assert back_geo.spacing == geo.spacing and back_geo.origin == geo.origin
    assert np.array_equal(back, seg)
    assert dice(back == 1, mask) > 0.97
