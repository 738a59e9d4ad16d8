"""Fine-tuning: `segpipe train --init-from CHECKPOINT [--init-mode full|encoder]` on a data set planned with
`segpipe plan --like` the pretrained model's data set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import TINY_NETWORK, hippo_ids, make_msd

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.jsonio import read_json
from segpipe.networks.registry import build_network
from segpipe.training.initialization import transfer_weights


def _net(in_channels: int, n_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(dict(TINY_NETWORK), in_channels, n_classes)


def test_matching_weights_load_heads_for_other_labels_are_skipped_extra_channels_repeated():
    source = _net(1, 3, seed=0)
    target = _net(2, 2, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, source.state_dict(), "full")
    src, got = source.state_dict(), target.state_dict()
    first = "encoder.stages.0.0.0.weight"  # (out, in, *kernel): 1 input channel pretrained, 2 here
    assert first in report["reshaped"]
    assert torch.equal(got[first], torch.cat([src[first], src[first]], dim=1) / 2)
    heads = [k for k in got if ".heads." in k and k.endswith("weight")]
    assert heads and all("3 classes in the checkpoint, 2 here" in report["skipped"][k] for k in heads)
    assert all(torch.equal(got[k], before[k]) for k in heads)  # left as initialized
    assert report["loaded"] and all(torch.equal(got[k], src[k]) for k in report["loaded"])
    assert any(k.startswith("decoder.blocks") for k in report["loaded"])


def test_encoder_mode_leaves_the_decoder_fresh():
    source, target = _net(1, 3, seed=0), _net(1, 3, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = transfer_weights(target, source.state_dict(), "encoder")
    got, src = target.state_dict(), source.state_dict()
    assert report["loaded"] and all(k.startswith("encoder.") for k in report["loaded"])
    assert all(torch.equal(got[k], src[k]) for k in report["loaded"])
    assert all(torch.equal(got[k], before[k]) for k in got if k.startswith("decoder."))


def test_a_checkpoint_of_another_network_is_refused():
    other = build_network(dict(TINY_NETWORK, features_per_stage=[6, 12, 24]), 1, 3)
    with pytest.raises(SegpipeError, match="no weight of the checkpoint fits"):
        transfer_weights(_net(1, 3, seed=0), {f"x.{k}": v for k, v in other.state_dict().items()})


def test_finetune_from_the_cli_on_a_dataset_with_other_labels(tiny_one_fold: Path, tmp_path: Path):
    """Pretrained on 3 classes (anterior, posterior); fine-tuned on 4 other cases labelled as one class."""
    src = make_msd(tmp_path / "whole", hippo_ids(10)[6:])
    for path in (src / "labelsTr").glob("*.nii.gz"):  # anterior + posterior -> one class
        img = sitk.ReadImage(str(path))
        merged = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype("uint8"))
        merged.CopyInformation(img)
        sitk.WriteImage(merged, str(path))
    meta = json.loads((src / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "hippocampus"}
    (src / "dataset.json").write_text(json.dumps(meta))
    ws = tmp_path / "ws"
    assert main(["onboard", str(src), "--name", "ft", "--workspace", str(ws), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws), "--like", str(tiny_one_fold / "tiny")]) == 0
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 0
    ckpt = tiny_one_fold / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    args = ["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
            "--iterations-per-epoch", "1", "--val-iterations", "1", "--workers", "0", "--threads", "1",
            "--no-validation", "--init-from", str(ckpt)]
    assert main(args) == 0
    fold = ws / "ft" / "results" / "3d_fullres" / "fold_0"
    report = read_json(fold / "init_report.json", kind="init_report")
    assert report["mode"] == "full" and len(report["sha256"]) == 64
    assert any(".heads." in k for k in report["skipped"]) and len(report["loaded"]) > 10
    record = read_json(ws / "ft" / "records" / "train_3d_fullres_fold_0.json")
    assert record["settings"]["init"]["sha256"] == report["sha256"]
    assert main(args + ["--force", "--init-mode", "encoder"]) == 0
    report = read_json(fold / "init_report.json", kind="init_report")
    assert report["mode"] == "encoder" and all(k.startswith("encoder.") for k in report["loaded"])


def test_a_bad_init_checkpoint_is_refused_before_force_clears_the_fold(tiny_one_fold: Path, tmp_path: Path):
    from conftest import copy_ws

    ws = copy_ws(tiny_one_fold, tmp_path / "ws")
    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    before = sorted(p.name for p in fold.iterdir())
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--workers", "0", "--no-validation", "--force",
                 "--init-from", str(tmp_path / "missing.pt")]) == 2
    assert sorted(p.name for p in fold.iterdir()) == before and (fold / "checkpoint_final.pt").is_file()
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--workers", "0", "--no-validation", "--force",
                 "--init-from", str(fold / "checkpoint_final.pt")]) == 2  # would delete its own source
    assert (fold / "checkpoint_final.pt").is_file()


def test_a_fresh_start_without_init_drops_the_report_of_a_killed_fine_tuning(tiny_ws_template: Path,
                                                                             tmp_path: Path):
    from conftest import copy_ws

    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_1"
    fold.mkdir(parents=True)
    (fold / "init_report.json").write_text('{"checkpoint": "x", "sha256": "y", "mode": "full"}')  # killed in epoch 0
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "1", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--workers", "0", "--no-validation"]) == 0
    assert not (fold / "init_report.json").exists()
    record = read_json(ws / "tiny" / "records" / "train_3d_fullres_fold_1.json")
    assert "init" not in record["settings"]
