"""`segpipe export-model` / `import-model`: one zip with checksums; predicting from the imported model gives the
same label maps as predicting from the original; damaged packages and mismatching workspaces are refused."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import hippo_ids, make_msd

from segpipe.cli import main


def _predict(ws: Path, name: str, images: Path, out: Path) -> dict[str, np.ndarray]:
    assert main(["predict", "-w", str(ws), "-n", name, "-i", str(images), "-o", str(out), "-f", "0",
                 "--no-mirror", "--workers", "1"]) == 0
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.glob("*.nii.gz"))}


def test_an_imported_model_predicts_exactly_as_the_original(tiny_one_fold: Path, tmp_path: Path, capsys):
    images = make_msd(tmp_path / "in", hippo_ids(8)[6:]) / "imagesTr"
    package = tmp_path / "tiny.zip"
    assert main(["export-model", "-w", str(tiny_one_fold), "-o", str(package)]) == 0
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        dataset = json.loads(zf.read("dataset.json"))
    assert {"manifest.json", "dataset.json", "plans.json", "results/3d_fullres/fold_0/checkpoint_final.pt",
            "results/3d_fullres/fold_0/trained_with.json"} <= names
    assert manifest["configurations"] == {"3d_fullres": ["0"]} and dataset["cases"] == []  # no training files named
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert main(["export-model", "-w", str(tiny_one_fold), "-o", str(package)]) == 2  # never overwritten silently

    fresh = tmp_path / "fresh"
    assert main(["import-model", str(package), "-w", str(fresh)]) == 0
    original = _predict(tiny_one_fold, "tiny", images, tmp_path / "p_orig")
    imported = _predict(fresh, "tiny", images, tmp_path / "p_imp")
    assert original.keys() == imported.keys() and len(original) == 2
    assert all(np.array_equal(original[k], imported[k]) for k in original)

    # importing again: the same data set's trained fold would be replaced
    capsys.readouterr()
    assert main(["import-model", str(package), "-w", str(fresh)]) == 2
    assert "exist in the workspace" in capsys.readouterr().err


def test_damaged_packages_and_other_labels_are_refused(tiny_one_fold: Path, tmp_path: Path, capsys):
    package = tmp_path / "tiny.zip"
    assert main(["export-model", "-w", str(tiny_one_fold), "-o", str(package)]) == 0
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(tampered, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            dst.writestr(n, data.replace(b'"batch_size": 2', b'"batch_size": 3') if n == "plans.json" else data)
    capsys.readouterr()
    assert main(["import-model", str(tampered), "-w", str(tmp_path / "ws1")]) == 2
    assert "checksum of plans.json does not match" in capsys.readouterr().err
    assert not (tmp_path / "ws1" / "tiny").exists()  # nothing written

    other = tmp_path / "ws2"
    src = make_msd(tmp_path / "src", hippo_ids(2))
    assert main(["onboard", str(src), "--name", "tiny", "--workspace", str(other), "--workers", "1"]) == 0
    meta = json.loads((other / "tiny" / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "tumour": 1}
    (other / "tiny" / "dataset.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["import-model", str(package), "-w", str(other)]) == 2
    assert "exists here with other labels" in capsys.readouterr().err
    assert main(["import-model", str(package), "-w", str(other), "-n", "tiny2"]) == 0
    assert json.loads((other / "tiny2" / "dataset.json").read_text())["name"] == "tiny2"  # installed name inside
    assert json.loads((other / "tiny2" / "plans.json").read_text())["dataset"] == "tiny2"
    assert main(["predict", "-w", str(other), "-n", "tiny2", "-i", str(src / "imagesTr"), "-o",
                 str(tmp_path / "p2"), "-f", "0", "--no-mirror", "--workers", "1"]) == 0


def test_folds_of_an_older_plan_are_not_exported(tiny_one_fold: Path, tmp_path: Path, capsys):
    from conftest import copy_ws

    from segpipe.io.jsonio import read_json, write_json

    ws = copy_ws(tiny_one_fold, tmp_path / "ws")
    plans_path = ws / "tiny" / "plans.json"
    plans = read_json(plans_path, kind="plans")
    plans["configurations"]["3d_fullres"]["batch_size"] = 3  # re-planned after fold 0 was trained
    write_json(plans_path, plans, kind="plans")
    capsys.readouterr()
    assert main(["export-model", "-w", str(ws), "-o", str(tmp_path / "m.zip")]) == 2
    assert "3d_fullres" in capsys.readouterr().err and not (tmp_path / "m.zip").exists()


def test_torchscript_export_matches_the_network_on_a_real_case(tiny_one_fold: Path, tmp_path: Path, capsys):
    import torch

    from segpipe.inference.models import load_models
    from segpipe.workspace import Workspace

    out = tmp_path / "net.pt"
    assert main(["export-network", "-w", str(tiny_one_fold), "-c", "3d_fullres", "-f", "0", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "matches the PyTorch network on preprocessed case" in said and out.is_file()
    traced = torch.jit.load(str(out))
    (model,) = load_models(Workspace(tiny_one_fold, "tiny"), ["3d_fullres"], ["0"], "final", torch.device("cpu"))
    x = torch.randn(2, 1, 16, 24, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(traced(x), model.networks[0](x), atol=1e-5)
    assert main(["export-network", "-w", str(tiny_one_fold), "-o", str(out)]) == 2  # exists: not replaced


def test_a_package_cannot_write_outside_its_data_set(tmp_path: Path, capsys):
    """Zip slip: a crafted package whose manifest lists '../../evil.json' with a correct checksum is refused."""
    import hashlib

    evil = b'{"x": 1}'
    package = tmp_path / "evil.zip"
    with zipfile.ZipFile(package, "w") as zf:
        zf.writestr("../../evil.json", evil)
        zf.writestr("manifest.json", json.dumps({
            "kind": "segpipe_model", "package_version": 1, "dataset": "d", "configurations": {},
            "files": {"../../evil.json": {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}}}))
    assert main(["import-model", str(package), "-w", str(tmp_path / "ws" / "inner")]) == 2
    assert "is not one a segpipe model package holds" in capsys.readouterr().err
    assert not list(tmp_path.rglob("evil.json"))
