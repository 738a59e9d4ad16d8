"""Properties every registered onboarding format (segpipe/dataset/formats/__init__.py, FORMATS) must have; a newly
registered format is tested here automatically (and fails until tests/conftest.py's make_synthetic_dataset can
write that layout).

Each format onboards a synthetic folder written in its layout and yields exactly the cases, labels, channels,
arrays and spacings that were written; ``--format auto`` recognises the layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SyntheticDataset

from segpipe.cli import main
from segpipe.dataset.formats import FORMATS, detect_format
from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.onboard import load_dataset
from segpipe.dataset.reading import read_case
from segpipe.workspace import Workspace

# What to write per layout: anisotropic spacings (mm) and non-cubic shapes (voxels), both in (z, y, x) / (y, x)
# order, so that a swapped axis shows. Layouts not listed get the factory's defaults.
VARIANTS: dict[str, dict[str, dict]] = {
    "msd": {"3d": {"shape": (6, 10, 8), "spacing": (2.5, 0.8, 0.6)},
            "3d_2ch": {"shape": (6, 10, 8), "spacing": (2.5, 0.8, 0.6), "n_channels": 2, "n_classes": 3}},
    "nnunet": {"3d_2ch": {"shape": (6, 10, 8), "spacing": (2.5, 0.8, 0.6), "n_channels": 2},
               "2d": {"ndim": 2, "shape": (12, 18), "spacing": (0.5, 0.7)}},
    "flat": {"3d": {"shape": (6, 10, 8), "spacing": (2.5, 0.8, 0.6), "n_classes": 3},
             "2d_png_0_255": {"ndim": 2, "shape": (24, 30), "spacing": (0.2, 0.2), "n_classes": 1, "mask_255": True,
                              "rgb_masks": True, "vary_spacing": True}},
}
CASES = [pytest.param(fmt, variant, id=f"{fmt}-{variant}")
         for fmt in sorted(FORMATS) for variant in sorted(VARIANTS.get(fmt, {"default": {}}))]


def _write(synthetic_dataset, fmt: str, variant: str) -> SyntheticDataset:
    return synthetic_dataset(fmt, n_cases=3, seed=7, **VARIANTS.get(fmt, {}).get(variant, {}))


def _onboard(ds: SyntheticDataset, ws_root: Path, fmt: str) -> Workspace:
    argv = ["onboard", str(ds.root), "--name", "d", "--workspace", str(ws_root), "--format", fmt, "--workers", "1",
            *ds.onboard_args]
    assert main(argv) == 0
    return Workspace(ws_root, "d")


@pytest.mark.parametrize("fmt, variant", CASES)
def test_every_format_onboards_the_cases_labels_and_channels_written(fmt: str, variant: str, synthetic_dataset,
                                                                     tmp_path: Path):
    ds = _write(synthetic_dataset, fmt, variant)
    spec = load_dataset(_onboard(ds, tmp_path / "ws", fmt))
    assert spec.format == fmt
    assert [c.id for c in spec.cases] == ds.case_ids
    assert spec.labels == ds.labels
    assert list(spec.channels.values()) == ds.channels and spec.n_channels == len(ds.channels)


@pytest.mark.parametrize("fmt, variant", CASES)
def test_every_format_reads_back_the_arrays_and_spacing_written(fmt: str, variant: str, synthetic_dataset,
                                                                tmp_path: Path):
    ds = _write(synthetic_dataset, fmt, variant)
    ws = _onboard(ds, tmp_path / "ws", fmt)
    spec = load_dataset(ws)
    for case in spec.cases:
        data, label, geo = read_case(spec, ws.raw, case)
        written = ds.images[case.id]
        assert data.dtype == np.float32 and data.shape == written.shape  # (c, z, y, x) / (c, y, x)
        np.testing.assert_allclose(data, written.astype(np.float32), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(label, ds.segmentations[case.id])  # label values as declared (255 -> 1)
        assert geo.shape == label.shape and geo.spacing == pytest.approx(ds.spacing[case.id])


@pytest.mark.parametrize("fmt, variant", CASES)
def test_auto_detection_recognises_every_format(fmt: str, variant: str, synthetic_dataset):
    ds = _write(synthetic_dataset, fmt, variant)
    globs = ds.onboard_args[ds.onboard_args.index("--image-glob") + 1:][:1] if "--image-glob" in ds.onboard_args else []
    assert detect_format(ds.root, OnboardOptions(name="d", image_globs=globs)) == fmt


def test_the_same_content_in_every_format_gives_the_same_data_set(synthetic_dataset, tmp_path: Path):
    """One synthetic data set (same seed, 3D, 2 classes) written in each layout onboards to identical arrays."""
    read = {}
    for fmt in sorted(FORMATS):
        ds = synthetic_dataset(fmt, n_cases=2, seed=3, shape=(5, 9, 7), spacing=(3.0, 1.0, 0.9))
        ws = _onboard(ds, tmp_path / f"ws_{fmt}", fmt)
        spec = load_dataset(ws)
        read[fmt] = {c.id: read_case(spec, ws.raw, c) for c in spec.cases}
    first, *others = read.values()
    for other in others:
        assert other.keys() == first.keys()
        for cid, (data, label, geo) in first.items():
            np.testing.assert_array_equal(other[cid][0], data)
            np.testing.assert_array_equal(other[cid][1], label)
            assert other[cid][2].spacing == pytest.approx(geo.spacing)
