"""Shared fixtures: where the test data lies, and small data sets built from it or synthesised.

Three sources of images, from always-present to optional:

* :func:`make_synthetic_dataset` (fixture ``synthetic_dataset``): small learnable data sets written on the fly in
  any onboarding layout (MSD, nnU-Net raw, flat), 2D or 3D, any channels and classes.
* ``EXAMPLE``: the 20 hippocampus cases shipped inside the package (segpipe/data/example/hippocampus). They are
  byte-identical copies of the first 20 cases of the real set, so :func:`hippo_ids` (n <= 20),
  :func:`hippo_file` and :func:`make_msd` read them from there and need nothing outside the repository.
* ``DATA`` = ../shared/data: the real data sets (all 260 hippocampus cases, HC18 fetal head ultrasound,
  head-and-neck CT labels). Tests that read it are marked ``@pytest.mark.real_data`` (optionally naming the
  sub-folders they need, e.g. ``real_data("fetal_head_us_2d")``) and are skipped, with the missing path in the
  reason, when it is absent.

Axis order everywhere is the numpy array order ``(z, y, x)`` (3D) or ``(y, x)`` (2D); spacings are in mm in that
same order (SimpleITK's ``SetSpacing`` takes ``(x, y, z)``: the writers below reverse it).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HIPPO = DATA / "hippocampus_mri"
FETAL = DATA / "fetal_head_us_2d"
HEADNECK = DATA / "headneck_oar_labels"
EXAMPLE = REPO / "segpipe" / "data" / "example" / "hippocampus"
N_EXAMPLE = 20  # cases in EXAMPLE: the first 20 (by file name) of HIPPO
sys.path.insert(0, str(REPO / "tests"))  # for tests/fixtures helpers

DATA_README = "../shared/data/README.md"


def real_data_missing(folders: Sequence[str] = ()) -> Path | None:
    """The first of ``DATA`` / ``folders`` (all of ``DATA`` when none are named) that does not exist, else None."""
    for path in [DATA / f for f in folders] or [DATA]:
        if not path.exists():
            return path
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``real_data`` when the data they need is not there, naming the missing path."""
    for item in items:
        marker = item.get_closest_marker("real_data")
        if marker is None:
            continue
        missing = real_data_missing(marker.args)
        if missing is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"real test data missing: {missing} (the real data sets live in ../shared/data beside the "
                       f"repository; see {DATA_README})"))


def require(path: Path) -> Path:
    """``path`` (under ``DATA``) when it exists. Only for tests marked ``real_data``: those are skipped before they
    get here when the data is absent, so a missing path here means a test that lacks the marker."""
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (see {DATA_README}); a test that reads ../shared/data must be "
                    "marked @pytest.mark.real_data so that it is skipped where the data is absent")
    return path


def hippo_ids(n: int) -> list[str]:
    """Ids of the first ``n`` hippocampus cases (sorted by file name): from the shipped example data when
    ``n <= 20``, else from the real set (tests asking for more must be marked ``real_data``)."""
    root = EXAMPLE if n <= N_EXAMPLE else require(HIPPO)
    names = sorted(p.name for p in (root / "imagesTr").iterdir() if p.name.endswith(".nii.gz"))
    return [n_[: -len(".nii.gz")] for n_ in names[:n]]


def hippo_file(cid: str, sub: str = "imagesTr") -> Path:
    """The hippocampus file of case ``cid`` in ``sub`` (``imagesTr`` or ``labelsTr``): the shipped copy when the
    case is one of the 20 example cases, else the real one."""
    example = EXAMPLE / sub / f"{cid}.nii.gz"
    return example if example.exists() else require(HIPPO / sub / f"{cid}.nii.gz")


def make_msd(dst: Path, ids: list[str], with_json: bool = True, copy: bool = True) -> Path:
    """An MSD task folder with the given hippocampus cases (copies, so tests may damage them; ``copy=False``
    makes symlinks to the originals instead)."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for cid in ids:
            (shutil.copy2 if copy else os.symlink)(hippo_file(cid, sub), dst / sub / f"{cid}.nii.gz")
    if with_json:
        (dst / "dataset.json").write_text(json.dumps({
            "name": "Hippocampus", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "anterior", "2": "posterior"}, "numTraining": len(ids),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]}))
    return dst


@pytest.fixture
def msd4(tmp_path: Path) -> Path:
    """A writable MSD folder with 4 real hippocampus cases (the shipped example copies)."""
    return make_msd(tmp_path / "Task04", hippo_ids(4))


HIPPO_LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def make_semi(dst: Path, n_labelled: int = 4, n_unlabelled: int = 3, dataset_json: dict | None = None,
              unlabelled_in: str = "imagesUnlabelled") -> tuple[list[str], list[str]]:
    """An nnU-Net folder of real hippocampus cases: ``n_labelled`` in imagesTr/labelsTr, ``n_unlabelled`` images
    in ``unlabelled_in`` (imagesTr: without a label file). Returns (labelled ids, unlabelled ids)."""
    ids = hippo_ids(n_labelled + n_unlabelled)
    labelled, unlabelled = ids[:n_labelled], ids[n_labelled:]
    for sub in ("imagesTr", "labelsTr", unlabelled_in):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for cid in labelled:
        shutil.copy2(hippo_file(cid), dst / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy2(hippo_file(cid, "labelsTr"), dst / "labelsTr" / f"{cid}.nii.gz")
    for cid in unlabelled:
        shutil.copy2(hippo_file(cid), dst / unlabelled_in / f"{cid}_0000.nii.gz")
    dj = {"channel_names": {"0": "MRI"}, "labels": HIPPO_LABELS, "numTraining": n_labelled, "file_ending": ".nii.gz"}
    dj.update(dataset_json or {})
    (dst / "dataset.json").write_text(json.dumps(dj))
    return labelled, unlabelled


def write_attributes(path: Path, ids: list[str], skip: tuple[str, ...] = ()) -> dict[str, str]:
    sites = {cid: ("north" if i % 2 else "south") for i, cid in enumerate(ids) if cid not in skip}
    path.write_text("case_id,site,scanner\n" + "".join(f"{c},{s},S{i % 3}\n" for i, (c, s) in enumerate(sites.items())))
    return sites


def tree_state(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (symlinks by target): to show a command changed nothing."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if ".locks" in p.relative_to(root).parts:  # lock files (segpipe/locking.py) are not artifacts
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


TINY_NETWORK = {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16],
                "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}


@pytest.fixture(scope="session")
def tiny_ws_template(tmp_path_factory) -> Path:
    """A workspace (6 real hippocampus cases from the shipped example data, 3d_fullres preprocessed) whose plan
    uses a tiny network and patch, so training runs in seconds. Copy it (``copy_ws``) before changing anything."""

    root = tmp_path_factory.mktemp("tiny")
    return make_tiny_workspace(make_msd(root / "src", hippo_ids(6)), root / "ws", "tiny")


def make_tiny_workspace(src: Path, ws: Path, name: str, workers: int = 1, onboard_args: Sequence[str] = ()) -> Path:
    """Onboard ``src`` as ``name`` into ``ws`` (with ``onboard_args``), fingerprint and plan it, give 3d_fullres the
    tiny network and a [16, 24, 16] patch (batch 2), and preprocess 3d_fullres: a workspace that trains in seconds."""
    from segpipe.cli import main
    from segpipe.io.jsonio import read_json, write_json

    assert main(["onboard", str(src), "--name", name, "--workspace", str(ws), "--workers", str(workers),
                 *onboard_args]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws)]) == 0
    plans_path = ws / name / "plans.json"
    plans = read_json(plans_path, kind="plans")
    cfg = plans["configurations"]["3d_fullres"]
    cfg.update({"patch_size": [16, 24, 16], "batch_size": 2, "network": dict(TINY_NETWORK)})
    write_json(plans_path, plans, kind="plans")
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", str(workers)]) == 0
    return ws


@pytest.fixture(scope="session")
def tiny_one_fold(tiny_ws_template: Path, tmp_path_factory) -> Path:
    """A copy of the tiny workspace with fold 0 of 3d_fullres trained for 2 iterations: a model to predict with.
    Tests only predict with it (prediction records are keyed by their output folder); copy it to change it."""
    from segpipe.cli import main

    ws = copy_ws(tiny_ws_template, tmp_path_factory.mktemp("one_fold") / "ws")
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
                 "--no-validation"]) == 0
    return ws


def copy_ws(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


# --- synthetic data sets ----------------------------------------------------------------------------------------

LAYOUTS = ("msd", "nnunet", "flat")
CHANNEL_NAMES = ("T1", "T2", "FLAIR", "PD")
PIXEL_SIZE_CSV = "pixel_size.csv"


@dataclass(frozen=True)
class SyntheticDataset:
    """A small labelled data set written by :func:`make_synthetic_dataset`, and what was written.

    Arrays are in array axis order, ``(z, y, x)`` (3D) or ``(y, x)`` (2D); ``spacing`` is in mm in that same order.
    ``images[cid]`` is ``(c, *spatial)`` as written (float32, or uint8 for 2D formats such as PNG);
    ``segmentations[cid]`` is ``(*spatial)`` int16 with the label values of ``labels`` (before any 0/255 coding
    in the file). ``onboard_args`` is what ``segpipe onboard <root>`` needs besides ``--name``/``--workspace``.
    """

    root: Path
    layout: str
    case_ids: list[str]
    channels: list[str]
    labels: dict[str, int]
    spacing: dict[str, tuple[float, ...]]
    images: dict[str, np.ndarray]
    segmentations: dict[str, np.ndarray]
    image_files: dict[str, list[Path]]
    label_files: dict[str, Path]
    onboard_args: list[str]

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 or 3."""
        return self.segmentations[self.case_ids[0]].ndim

    @property
    def spacing_csv(self) -> Path:
        """The pixel-size CSV of a flat 2D PNG data set (``filename,pixel size(mm),head circumference (mm)``)."""
        return self.root / PIXEL_SIZE_CSV


def synthetic_segmentation(shape: Sequence[int], n_classes: int, rng: np.random.Generator,
                           radius_fraction: tuple[float, float] = (0.15, 0.3)) -> np.ndarray:
    """A label map ``shape`` (array axis order, voxels) with one filled ellipsoid per foreground class 1..n_classes.

    Radii are ``radius_fraction`` of the extent of each axis (at least 1 voxel); every class keeps at least one
    voxel (later blobs may cover part of earlier ones). int16, background 0.
    """
    shape = tuple(int(s) for s in shape)
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(100):
        seg = np.zeros(shape, np.int16)
        for k in range(1, n_classes + 1):
            radii = [max(1.0, rng.uniform(*radius_fraction) * n) for n in shape]
            centre = [rng.uniform(min(r, (n - 1) / 2), max(n - 1 - r, (n - 1) / 2)) for r, n in zip(radii, shape)]
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
            seg[inside] = k
        if all((seg == k).any() for k in range(1, n_classes + 1)):
            return seg
    raise ValueError(f"cannot fit {n_classes} classes into a {shape} label map")


def synthetic_image(seg: np.ndarray, n_channels: int, n_classes: int, rng: np.random.Generator,
                    uint8: bool = False) -> np.ndarray:
    """Channels ``(c, *seg.shape)`` that a network can learn ``seg`` from: each class a brighter plateau
    (class ``k`` at ``20 + 100 k / n_classes``, scaled by ``1 + 0.25 c`` in channel ``c``) plus Gaussian noise
    (sd 5). float32, or uint8 clipped to 0..255."""
    out = np.empty((n_channels, *seg.shape), np.float32)
    for c in range(n_channels):
        level = 20.0 + 100.0 * seg.astype(np.float32) / max(1, n_classes) * (1.0 + 0.25 * c)
        out[c] = level + rng.normal(0.0, 5.0, seg.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if uint8 else out


def _write(array: np.ndarray, spacing: Sequence[float], path: Path, vector: bool = False) -> None:
    """Write ``array`` (array axis order; a leading channel axis for 4D files) with ``spacing`` (mm, array axis
    order of the spatial axes) through SimpleITK, which takes spacing in ``(x, y, z)`` order. PNGs get no spacing
    (ITK would store it in a pHYs chunk; HC18's PNGs, like most, have none and read back as 1 mm)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    sp = [float(s) for s in reversed(spacing)]
    if path.suffix.lower() != ".png":
        img.SetSpacing(sp + [1.0] * (img.GetDimension() - len(sp)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def make_synthetic_dataset(root: Path, layout: str = "msd", n_cases: int = 4, ndim: int = 3,
                           shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                           n_channels: int = 1, n_classes: int = 2, seed: int = 0,
                           case_ids: Sequence[str] | None = None, ending: str | None = None,
                           mask_255: bool = False, rgb_masks: bool = False, vary_spacing: bool = False,
                           with_json: bool = True) -> SyntheticDataset:
    """Write a small labelled data set under ``root`` in an onboarding ``layout`` and describe it.

    Layouts (as segpipe/dataset/formats/ reads them):

    * ``"msd"``: ``imagesTr/<case>.nii.gz`` (a 4D file ``(c, z, y, x)`` when ``n_channels > 1``),
      ``labelsTr/<case>.nii.gz`` and ``dataset.json`` (modality, labels ``{value: name}``, training) unless
      ``with_json`` is False. 3D only.
    * ``"nnunet"``: ``imagesTr/<case>_<cccc><ending>`` (one file per channel), ``labelsTr/<case><ending>`` and
      ``dataset.json`` (channel_names, labels ``{name: value}``, numTraining, file_ending).
    * ``"flat"``: ``images/<case><ending>`` (``images/<case>_<cccc><ending>`` per channel when there are
      several) and ``masks/<case>_Mask<ending>``; onboarded with ``--image-glob``/``--label-glob`` (see
      ``onboard_args``). 2D PNGs carry no spacing: a ``pixel_size.csv`` beside them gives it (HC18's columns).

    Args:
        n_cases: number of cases (ignored when ``case_ids`` is given); ids ``case_000``, ``case_001``, ...
        ndim: 2 or 3 spatial dimensions.
        shape: spatial shape in voxels, array axis order ``(z, y, x)`` / ``(y, x)``; default ``(16, 24, 20)`` /
            ``(32, 40)``.
        spacing: voxel spacing in mm, array axis order; default 1 mm isotropic. PNG data sets need equal
            ``(y, x)`` spacing (one pixel size per image).
        n_channels: image channels (modalities).
        n_classes: foreground classes; labels are ``background=0, class_1=1, ...``.
        seed: seeds the blob positions and the noise; the same arguments give the same files.
        ending: file ending; default ``.nii.gz``, or ``.png`` for a flat 2D data set.
        mask_255: store the masks as 0/255 (a single foreground class only), as HC18 does.
        rgb_masks: store the masks as RGB (three equal components), as HC18 does (2D only).
        vary_spacing: case ``i`` gets ``spacing * (1 + 0.05 i)`` (per-image pixel sizes, as in HC18).
        with_json: write dataset.json (msd, nnunet); without it, ``onboard_args`` carries ``--labels``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if layout == "msd" and ndim != 3:
        raise ValueError("MSD task folders hold 3D (or 4D multi-channel) NIfTI files only")
    shape = tuple(int(s) for s in (shape or ((16, 24, 20) if ndim == 3 else (32, 40))))
    spacing = tuple(float(s) for s in (spacing or (1.0,) * ndim))
    if len(shape) != ndim or len(spacing) != ndim:
        raise ValueError(f"shape {shape} and spacing {spacing} need {ndim} values (array axis order)")
    ending = ending or (".png" if layout == "flat" and ndim == 2 else ".nii.gz")
    png = ending == ".png"
    if png and (ndim != 2 or n_channels != 1):
        raise ValueError("PNG data sets are 2D with one (grey) channel")
    if png and spacing[0] != spacing[1]:
        raise ValueError(f"a PNG pixel size is one number: spacing {spacing} differs per axis")
    if mask_255 and n_classes != 1:
        raise ValueError("0/255 masks hold one foreground class")
    if rgb_masks and ndim != 2:
        raise ValueError("RGB masks are 2D")
    ids = list(case_ids) if case_ids is not None else [f"case_{i:03d}" for i in range(n_cases)]
    channels = [CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"C{c}" for c in range(n_channels)]
    labels = {"background": 0, **{f"class_{k}": k for k in range(1, n_classes + 1)}}
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    spacings, images, segs, image_files, label_files = {}, {}, {}, {}, {}
    for i, cid in enumerate(ids):
        sp = tuple(s * (1 + 0.05 * i) for s in spacing) if vary_spacing else spacing
        seg = synthetic_segmentation(shape, n_classes, rng)
        img = synthetic_image(seg, n_channels, n_classes, rng, uint8=png)
        stored = (seg * 255 if mask_255 else seg).astype(np.uint8)
        if rgb_masks:
            stored = np.stack([stored] * 3, axis=-1)
        if layout == "msd":
            files = [root / "imagesTr" / f"{cid}{ending}"]
            _write(img if n_channels > 1 else img[0], sp, files[0])
            lab = root / "labelsTr" / f"{cid}{ending}"
        elif layout == "nnunet":
            files = [root / "imagesTr" / f"{cid}_{c:04d}{ending}" for c in range(n_channels)]
            lab = root / "labelsTr" / f"{cid}{ending}"
        else:
            files = ([root / "images" / f"{cid}{ending}"] if n_channels == 1 else
                     [root / "images" / f"{cid}_{c:04d}{ending}" for c in range(n_channels)])
            lab = root / "masks" / f"{cid}_Mask{ending}"
        if layout != "msd":
            for c, f in enumerate(files):
                _write(img[c], sp, f)
        _write(stored, sp, lab, vector=rgb_masks)
        spacings[cid], images[cid], segs[cid], image_files[cid], label_files[cid] = sp, img, seg, files, lab

    label_args = ["--labels", *(f"{n}={v}" for n, v in labels.items())]
    onboard_args: list[str] = []
    if layout == "msd" and with_json:
        (root / "dataset.json").write_text(json.dumps({
            "name": root.name, "modality": dict(enumerate(channels)),
            "labels": {str(v): n for n, v in labels.items()}, "numTraining": len(ids),
            "training": [{"image": f"./imagesTr/{c}{ending}", "label": f"./labelsTr/{c}{ending}"} for c in ids]}))
    elif layout == "nnunet" and with_json:
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": dict(enumerate(channels)), "labels": labels, "numTraining": len(ids),
            "file_ending": ending}))
    elif layout == "flat":
        globs = (["images/*" + ending] if n_channels == 1 else [f"images/*_{c:04d}{ending}" for c in range(n_channels)])
        onboard_args = [*(a for g in globs for a in ("--image-glob", g)), "--label-glob", f"masks/*_Mask{ending}",
                        "--channels", *channels, *label_args]
        if png:
            with open(root / PIXEL_SIZE_CSV, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
                w.writerows([f"{cid}{ending}", spacings[cid][0], 100.0] for cid in ids)
            onboard_args += ["--spacing-csv", str(root / PIXEL_SIZE_CSV)]
    if layout != "flat" and not with_json:
        onboard_args = label_args + (["--channels", *channels] if layout == "msd" else [])
    return SyntheticDataset(root, layout, ids, channels, labels, spacings, images, segs, image_files, label_files,
                            onboard_args)


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Callable[..., SyntheticDataset]:
    """A factory: ``synthetic_dataset(layout="msd", n_cases=4, ndim=3, shape=..., spacing=..., n_channels=1,
    n_classes=2, seed=0, ...)`` writes a new data set under ``tmp_path`` (see :func:`make_synthetic_dataset`)."""
    counter = itertools.count()

    def make(layout: str = "msd", **kwargs) -> SyntheticDataset:
        return make_synthetic_dataset(tmp_path / f"synthetic_{layout}_{next(counter)}", layout, **kwargs)

    return make


HC18_SHAPE = (540, 800)  # (y, x) pixels, as every HC18 frame


def make_hc18_like(dst: Path, names: Sequence[str] = ("000_HC", "001_HC", "002_HC"),
                   shape: Sequence[int] = HC18_SHAPE, seed: int = 0) -> SyntheticDataset:
    """A synthetic stand-in for an HC18 subset, laid out like ../shared/data/fetal_head_us_2d: ``images/<name>.png``
    (grey uint8, ``shape`` = ``(y, x)`` pixels), ``masks/<name>_Mask.png`` (a filled "head" ellipse stored as RGB
    0/255) and ``pixel_size.csv`` (HC18's columns; pixel sizes about 0.07 mm, differing per image)."""
    return make_synthetic_dataset(dst, "flat", ndim=2, shape=shape, spacing=(0.07, 0.07), n_classes=1,
                                  case_ids=names, ending=".png", mask_255=True, rgb_masks=True, vary_spacing=True,
                                  seed=seed)
