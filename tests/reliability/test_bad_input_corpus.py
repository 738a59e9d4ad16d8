"""The bad-input corpus: every fault gives exit code 2, one clear message naming the file (where there is one),
the problem and the fix, no traceback, and leaves no partial artifacts behind.

Each scenario builds its fault from real cases (the shipped hippocampus example data), small HC18-like PNGs
(synthetic) or a tiny trained workspace, and returns the command, the texts the message must contain, and the
folder that must be unchanged by the failing command.
"""
from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import copy_ws, hippo_file, hippo_ids, make_hc18_like, make_msd, tree_state

from segpipe.cli import main
from segpipe.io.jsonio import read_json, write_json

LABELS = ["--labels", "background=0", "anterior=1", "posterior=2"]
Scenario = Callable[[Path, Path], tuple[list[str], list[str], Path]]


def _onboard(src: Path, tmp: Path, *extra: str) -> list[str]:
    return ["onboard", str(src), "--name", "d", "--workspace", str(tmp / "ws"), "--workers", "1", *extra]


def _msd(tmp: Path, n: int = 3) -> Path:
    return make_msd(tmp / "src", hippo_ids(n))


def _img(src: Path, i: int = 1) -> Path:
    return sorted((src / "imagesTr").iterdir())[i]


def _lab(src: Path, i: int = 1) -> Path:
    return sorted((src / "labelsTr").iterdir())[i]


def _rewrite(path: Path, fn) -> None:
    img = sitk.ReadImage(str(path))
    arr = fn(sitk.GetArrayFromImage(img))
    out = sitk.GetImageFromArray(arr)
    if arr.ndim == img.GetDimension():
        out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def truncated_nifti(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    p.write_bytes(p.read_bytes()[:2000])
    return _onboard(src, tmp), [str(p), "truncated"], tmp


def truncated_png(tmp, tiny):
    src = make_hc18_like(tmp / "png", ["000_HC", "001_HC"], shape=(54, 80)).root
    bad = sorted((src / "images").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    return (_onboard(src, tmp, "--image-glob", "images/*.png", "--label-glob", "masks/*_Mask.png"),
            [str(bad), "cannot read image"], tmp)


def zero_byte_file(tmp, tiny):
    src = _msd(tmp)
    p = _lab(src)
    p.write_bytes(b"")
    return _onboard(src, tmp), [str(p), "0 bytes"], tmp


def wrong_file_ending(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    png = make_hc18_like(tmp / "png", ["000_HC"], shape=(54, 80)).image_files["000_HC"][0]
    shutil.copy(png, p)  # PNG bytes under a .nii.gz name
    return _onboard(src, tmp), [str(p), "not the format its ending says"], tmp


def geometry_mismatch(tmp, tiny):
    src = _msd(tmp)
    p = _lab(src)
    img = sitk.ReadImage(str(p))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(p))
    return _onboard(src, tmp), [str(p), "spacing"], tmp


def image_4d(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    img = sitk.ReadImage(str(p))
    sitk.WriteImage(sitk.JoinSeries([img, img]), str(p))
    return _onboard(src, tmp), [str(p), "4D"], tmp


def nnunet_dataset(tmp: Path, channels: int, files: list[str]) -> Path:
    src = tmp / "nn"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    for cid in hippo_ids(2):
        for ch in files:
            shutil.copy(hippo_file(cid), src / "imagesTr" / f"{cid}_{ch}.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), src / "labelsTr" / f"{cid}.nii.gz")
    (src / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): f"c{i}" for i in range(channels)},
        "labels": {"background": 0, "anterior": 1, "posterior": 2}, "file_ending": ".nii.gz"}))
    return src


def missing_channel_file(tmp, tiny):
    src = nnunet_dataset(tmp, 2, ["0000"])
    return _onboard(src, tmp), ["_0001.nii.gz", "missing channel"], tmp


def extra_channel_file(tmp, tiny):
    src = nnunet_dataset(tmp, 1, ["0000", "0001"])
    return _onboard(src, tmp), ["_0001.nii.gz", "extra channel"], tmp


def undeclared_label_value(tmp, tiny):
    src = _msd(tmp)
    p = _lab(src)
    _rewrite(p, lambda a: np.where(a == 2, 7, a).astype(a.dtype))
    return _onboard(src, tmp), [str(p), "[7] are not declared"], tmp


def non_integer_float_label(tmp, tiny):
    src = _msd(tmp)
    p = _lab(src)
    _rewrite(p, lambda a: a.astype(np.float32) * 0.5)
    return _onboard(src, tmp), [str(p), "non-integer"], tmp


def nan_intensity(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    _rewrite(p, lambda a: np.where(np.indices(a.shape).sum(0) == 5, np.nan, a.astype(np.float32)))
    return _onboard(src, tmp), [str(p), "NaN/Inf"], tmp


def constant_image(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    _rewrite(p, lambda a: np.full_like(a, 3))
    return _onboard(src, tmp), [str(p), "constant"], tmp


def empty_dataset(tmp, tiny):
    src = tmp / "empty"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    return _onboard(src, tmp, *LABELS), [str(src), "no cases found"], tmp


def dotdot_case_path(tmp, tiny):
    src = _msd(tmp)
    dj = json.loads((src / "dataset.json").read_text())
    dj["training"][0]["label"] = "./labelsTr/../../secret.nii.gz"
    (src / "dataset.json").write_text(json.dumps(dj))
    return _onboard(src, tmp), ["leaves the data set folder"], tmp


def slash_in_case_id(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    dj_path = ws / "tiny" / "dataset.json"
    dj = json.loads(dj_path.read_text())
    dj["cases"][0]["id"] = "a/b"  # a hand-edited workspace dataset.json
    dj_path.write_text(json.dumps(dj))
    return ["fingerprint", "-w", str(ws), "--force"], [str(dj_path), "path separator"], ws


def symlink_outside(tmp, tiny):
    src = _msd(tmp)
    p = _img(src)
    p.unlink()
    p.symlink_to(hippo_file(p.name[: -len(".nii.gz")]))
    return _onboard(src, tmp), [str(p), "outside the data set folder", "--allow-external-links"], tmp


def dataset_json_missing_field(tmp, tiny):
    src = _msd(tmp)
    dj = json.loads((src / "dataset.json").read_text())
    del dj["modality"]
    (src / "dataset.json").write_text(json.dumps(dj))
    return _onboard(src, tmp), [str(src / "dataset.json"), "no 'modality' field"], tmp


def dataset_json_wrong_type(tmp, tiny):
    src = _msd(tmp)
    dj = json.loads((src / "dataset.json").read_text())
    dj["training"] = "all of them"
    (src / "dataset.json").write_text(json.dumps(dj))
    return _onboard(src, tmp), [str(src / "dataset.json"), "'training' should be a list"], tmp


def labels_not_consecutive(tmp, tiny):
    src = _msd(tmp)
    return (_onboard(src, tmp, "--labels", "background=0", "anterior=1", "posterior=2", "extra=5"),
            ["not consecutive"], tmp)


def unknown_format(tmp, tiny):
    src = _msd(tmp)
    return _onboard(src, tmp, "--format", "msdd"), ["did you mean 'msd'"], tmp


def unknown_configuration(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    return ["preprocess", "-w", str(ws), "--config", "3d_fulres"], ["did you mean '3d_fullres'"], ws


def unknown_network(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    return ["plan", "-w", str(ws), "--network", "resnet"], ["unknown network 'resnet'", "plain"], ws


def unknown_trainer(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    return (["train", "-w", str(ws), "--trainer", "defualt", "--epochs", "1"], ["did you mean 'default'"], ws)


def single_case_bad_fold(tmp, tiny):
    src = make_msd(tmp / "one", hippo_ids(1))
    ws = tmp / "ws1"
    assert main(["onboard", str(src), "--name", "one", "--workspace", str(ws)]) == 0
    assert main(["fingerprint", "-w", str(ws)]) == 0
    assert main(["plan", "-w", str(ws)]) == 0
    assert main(["preprocess", "-w", str(ws), "--config", "2d"]) == 0
    return (["train", "-w", str(ws), "--config", "2d", "--fold", "3", "--epochs", "1"], ["unknown fold '3'",
                                                                                          "0..0"], ws / "one"
            / "results")


def disk_full(tmp, tiny, monkeypatch=None):
    ws = copy_ws(tiny, tmp / "t")
    return ["fingerprint", "-w", str(ws), "--force"], ["no space left", "fix:"], ws


def read_only_workspace(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    return ["plan", "-w", str(ws), "--force"], ["cannot write here", "fix:"], ws


def incompatible_checkpoint(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    assert main(["train", "-w", str(ws), "--epochs", "1", "--iterations-per-epoch", "1", "--val-iterations", "1",
                 "--workers", "0", "--no-validation"]) == 0
    plans = read_json(ws / "tiny" / "plans.json", kind="plans")
    plans["configurations"]["3d_fullres"]["network"]["features_per_stage"] = [8, 16, 32]
    write_json(ws / "tiny" / "plans.json", plans, kind="plans")
    img = tmp / "in"
    img.mkdir()
    shutil.copy(hippo_file(hippo_ids(8)[7]), img)
    return (["predict", "-w", str(ws), "-i", str(img), "-o", str(tmp / "out"), "--workers", "1"],
            ["checkpoint_final.pt", "different network"], tmp)


def prediction_channel_mismatch(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    assert main(["train", "-w", str(ws), "--epochs", "1", "--iterations-per-epoch", "1", "--val-iterations", "1",
                 "--workers", "0", "--no-validation"]) == 0
    img = tmp / "in"
    img.mkdir()
    cid = hippo_ids(8)[7]
    for ch in ("0000", "0001", "0002"):
        shutil.copy(hippo_file(cid), img / f"{cid}_{ch}.nii.gz")
    return (["predict", "-w", str(ws), "-i", str(img), "-o", str(tmp / "out"), "--workers", "1"],
            [cid, "channel"], tmp)


def corrupt_workspace_json(tmp, tiny):
    ws = copy_ws(tiny, tmp / "t")
    (ws / "tiny" / "fingerprint.json").write_text("{ truncated")
    return ["plan", "-w", str(ws), "--force"], [str(ws / "tiny" / "fingerprint.json"), "not valid JSON"], ws


def stage_out_of_order(tmp, tiny):
    src = _msd(tmp)
    ws = tmp / "ws0"
    assert main(["onboard", str(src), "--name", "o", "--workspace", str(ws)]) == 0
    return ["preprocess", "-w", str(ws)], ["plans.json", "file not found"], ws


SCENARIOS: dict[str, Scenario] = {f.__name__: f for f in [
    truncated_nifti, truncated_png, zero_byte_file, wrong_file_ending, geometry_mismatch, image_4d,
    missing_channel_file, extra_channel_file, undeclared_label_value, non_integer_float_label, nan_intensity,
    constant_image, empty_dataset, dotdot_case_path, slash_in_case_id, symlink_outside, dataset_json_missing_field,
    dataset_json_wrong_type, labels_not_consecutive, unknown_format, unknown_configuration, unknown_network,
    unknown_trainer, single_case_bad_fold, disk_full, read_only_workspace, incompatible_checkpoint,
    prediction_channel_mismatch, corrupt_workspace_json, stage_out_of_order]}


def _fail_writes(monkeypatch, err: int) -> None:
    import segpipe.io.atomic as atomic

    real = atomic.atomic_path.__wrapped__ if hasattr(atomic.atomic_path, "__wrapped__") else None
    original_replace = atomic.os.replace

    def broken_replace(a, b, *args, **kwargs):
        raise OSError(err, __import__("os").strerror(err), str(b))

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    del real, original_replace


PARALLEL_STAGES = {"onboard", "fingerprint", "preprocess", "predict", "evaluate"}


def with_workers(argv: list[str], workers: str) -> list[str]:
    """``argv`` run with ``workers`` worker processes (stages that have workers of their own)."""
    if argv[0] not in PARALLEL_STAGES:
        return argv
    if "--workers" in argv:
        i = argv.index("--workers")
        return argv[:i + 1] + [workers] + argv[i + 2:]
    return argv + ["--workers", workers]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fault(name: str, workers: str, tmp_path: Path, tiny_ws_template: Path, capsys, monkeypatch):
    argv, expected, guarded = SCENARIOS[name](tmp_path, tiny_ws_template)
    argv = with_workers(argv, workers)
    before = tree_state(guarded)
    capsys.readouterr()
    if name == "disk_full":
        _fail_writes(monkeypatch, errno.ENOSPC)
    if name == "read_only_workspace":
        _fail_writes(monkeypatch, errno.EROFS)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert "fix:" in err and "Traceback" not in err
    after = tree_state(guarded)
    assert after == before, {k for k in set(after) ^ set(before)} | {k for k in after if after.get(k) != before.get(k)}
    leftovers = [p for p in Path(guarded).rglob(".tmp-*")] if Path(guarded).exists() else []
    assert not leftovers
