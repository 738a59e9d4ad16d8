"""`segpipe export-network --format onnx`: the file onnxruntime runs gives the PyTorch network's logits on real
preprocessed cases, with a dynamic batch axis; a file that differs, or is not valid ONNX, is never written; without
the optional packages the error names the fix."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.cli import main
from segpipe.inference import network_export
from segpipe.inference.network_export import ONNX_TOLERANCE
from segpipe.workspace import Workspace

PATCH = (16, 24, 16)  # the tiny workspace's 3d_fullres patch (conftest.make_tiny_workspace)


def _real_patches(ws: Workspace, n: int) -> np.ndarray:
    """``(n, 1, *PATCH)`` float32: the corner patch of the last ``n`` preprocessed cases (channels first, spatial
    axes z, y, x), other cases and another place than the export's own check."""
    from segpipe.preprocessing.store import load_case

    folder = ws.preprocessed("3d_fullres")
    cases = sorted(p.stem for p in folder.glob("*.json"))[-n:]
    out = np.zeros((n, 1, *PATCH), np.float32)
    for i, case in enumerate(cases):
        data, _, _ = load_case(folder, case)
        part = data[:1, :PATCH[0], :PATCH[1], :PATCH[2]]
        out[i, :, :part.shape[1], :part.shape[2], :part.shape[3]] = part
    return out


def test_the_onnx_file_matches_the_network_on_real_cases_with_any_batch_size(tiny_one_fold: Path, tmp_path: Path,
                                                                             capsys):
    import onnx
    import onnxruntime as ort

    from segpipe.inference.models import load_models

    out = tmp_path / "net.onnx"
    assert main(["export-network", "-w", str(tiny_one_fold), "-c", "3d_fullres", "-f", "0", "--format", "onnx",
                 "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "ONNX (opset 18" in said and "matches the PyTorch network on preprocessed case" in said
    onnx.checker.check_model(str(out), full_check=True)

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "patches" and outp.name == "logits"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, *PATCH]  # batch axis dynamic, patch fixed

    ws = Workspace(tiny_one_fold, "tiny")
    (model,) = load_models(ws, ["3d_fullres"], ["0"], "final", torch.device("cpu"))
    x = _real_patches(ws, 2)
    assert np.abs(x).max() > 0  # real data, not zeros
    with torch.inference_mode():
        expected = model.networks[0](torch.from_numpy(x)).numpy()
    assert expected.shape == (2, 3, *PATCH)
    for batch in (x, x[1:]):  # batch size 2, then 1
        (got,) = session.run(["logits"], {"patches": batch})
        assert got.shape == (len(batch), 3, *PATCH)
        assert np.abs(got - expected[-len(batch):]).max() <= ONNX_TOLERANCE

    assert main(["export-network", "-w", str(tiny_one_fold), "--format", "onnx", "-o", str(out)]) == 2  # exists


def test_an_onnx_file_that_differs_from_the_network_is_not_written(tiny_one_fold: Path, tmp_path: Path,
                                                                   monkeypatch, capsys):
    import onnx
    from onnx import numpy_helper

    write = network_export._write_onnx

    def write_then_shift_weights(net, x, path, *args):
        write(net, x, path, *args)
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(1e-2), init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(network_export, "_write_onnx", write_then_shift_weights)
    out = tmp_path / "net.onnx"
    capsys.readouterr()
    assert main(["export-network", "-w", str(tiny_one_fold), "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the ONNX network differs from the PyTorch network by" in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_an_invalid_onnx_file_is_not_written(tiny_one_fold: Path, tmp_path: Path, monkeypatch, capsys):
    write = network_export._write_onnx

    def write_truncated(net, x, path, *args):
        write(net, x, path, *args)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(network_export, "_write_onnx", write_truncated)
    capsys.readouterr()
    assert main(["export-network", "-w", str(tiny_one_fold), "--format", "onnx", "-o", str(tmp_path / "n.onnx")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime", "onnxscript"])
def test_without_the_onnx_packages_the_error_names_the_fix(tiny_one_fold: Path, tmp_path: Path, monkeypatch, capsys,
                                                          missing: str):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError, as if not installed
    loaded = []
    monkeypatch.setattr(network_export, "load_models", lambda *a, **k: loaded.append(a))
    out = tmp_path / "net.onnx"
    capsys.readouterr()
    assert main(["export-network", "-w", str(tiny_one_fold), "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} cannot be imported" in err and "pip install 'segpipe[onnx]'" in err
    assert not out.exists() and loaded == []  # refused before the network was loaded
    # TorchScript needs none of them
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(["export-network", "-w", str(tiny_one_fold), "-o", str(tmp_path / "net.pt")]) == 0
