"""2D PNG data end to end: onboard HC18-like frames (synthetic, pixel size in a CSV), train a tiny 2d model, predict
the frames and evaluate the predictions against the masks they came with."""
from __future__ import annotations

from pathlib import Path

from conftest import make_hc18_like

from segpipe.cli import main
from segpipe.io.images import read_image


def test_predictions_of_png_frames_evaluate_against_their_masks(tmp_path: Path, capsys):
    ds = make_hc18_like(tmp_path / "hc", [f"{i:03d}_HC" for i in range(4)], shape=(64, 96))
    ws, pred = tmp_path / "ws", tmp_path / "pred"
    assert main(["onboard", str(ds.root), "--name", "hc", "--workspace", str(ws), "--workers", "1",
                 *ds.onboard_args]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws)]) == 0
    assert main(["preprocess", "-w", str(ws), "--config", "2d", "--workers", "1"]) == 0
    assert main(["train", "-w", str(ws), "--config", "2d", "--fold", "0", "--epochs", "1", "--iterations-per-epoch",
                 "1", "--val-iterations", "1", "--workers", "0", "--no-validation"]) == 0
    assert main(["predict", "-w", str(ws), "-i", str(ds.root / "images"), "-o", str(pred), "--config", "2d",
                 "--folds", "0", "--no-mirror", "--spacing-csv", str(ds.spacing_csv), "--workers", "1"]) == 0
    for cid in ds.case_ids:
        label, geo = read_image(pred / f"{cid}.png")
        _, mask_geo = read_image(ds.label_files[cid])
        assert label.shape == ds.segmentations[cid].shape and not geo.mismatches(mask_geo)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ds.root / "masks"), "--ref-glob", "*_Mask.png",
                 "--spacing-csv", str(ds.spacing_csv), "--labels", "background=0", "class_1=1", "--workers",
                 "1"]) == 0, capsys.readouterr().err
