from pathlib import Path

import pytest
import torch
from conftest import copy_ws

from segpipe import devices
from segpipe.cli import main
from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import SegpipeError
from segpipe.training.checkpoint import load_checkpoint


def test_precision_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cuda, "auto") is torch.float16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16  # measured equal Dice, twice as fast
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(cpu, "auto") is None  # emulated bfloat16 would be slower than float32
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16 and autocast_dtype(cpu, "fp32") is None
    with pytest.raises(SegpipeError, match="needs a CUDA GPU"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(SegpipeError, match="unknown precision"):
        autocast_dtype(cpu, "int8")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SegpipeError, match="no CUDA GPU"):
            pick_device("cuda")


def test_bf16_training_and_prediction_on_cpu(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["train", "-w", str(ws), "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1",
                 "--workers", "0", "--precision", "bf16"]) == 0
    state = load_checkpoint(ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt")
    assert state["settings"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["network"].values() if v.is_floating_point())
