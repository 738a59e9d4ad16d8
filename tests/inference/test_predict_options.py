"""predict's nnU-Net-style options: --step-size (sliding-window step, recorded) and --disable-tta (= --no-mirror)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hippo_ids, make_msd

from segpipe.cli import build_parser, main
from segpipe.io.jsonio import read_json


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.5"])
def test_a_step_size_outside_0_1_is_refused(bad: str, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "-i", "a", "-o", "b", "--step-size", bad])
    assert "not in (0, 1]" in capsys.readouterr().err


def test_step_size_and_disable_tta_reach_the_prediction(tiny_one_fold: Path, tmp_path: Path, monkeypatch):
    import segpipe.inference.predict as predict_module

    seen: list[tuple[bool, float]] = []
    real = predict_module.predict_case

    def spy(model, pdata, n_classes, mirror, device, batch_size=None, amp_dtype=None, step=0.5, region_order=None):
        seen.append((mirror, step))
        return real(model, pdata, n_classes, mirror, device, batch_size, amp_dtype, step, region_order)

    monkeypatch.setattr(predict_module, "predict_case", spy)
    images = make_msd(tmp_path / "in", hippo_ids(7)[6:]) / "imagesTr"
    out = tmp_path / "out"
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(images), "-o", str(out), "-f", "0",
                 "--disable-tta", "--step-size", "1", "--workers", "1"]) == 0
    assert seen == [(False, 1.0)] and len(list(out.glob("*.nii.gz"))) == 1
    records = list((tiny_one_fold / "tiny" / "records").glob("predict_*.json"))
    assert any(read_json(r)["settings"].get("step") == 1.0 for r in records)
