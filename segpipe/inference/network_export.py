"""One fold's network as a file for serving without segpipe (``segpipe export-network``): TorchScript or ONNX.

The file maps a batch of preprocessed patches ``(B, c, *patch)`` float32 (channels first, spatial axes in array
order ``(z, y, x)`` or ``(y, x)``; the configuration's spacing and normalization) to logits
``(B, n_classes, *patch)``; preprocessing, sliding window, mirroring and export to the image's geometry stay
segpipe's. Before the file replaces anything it is loaded back (``torch.jit.load``, or an onnxruntime session)
and its output compared with the PyTorch network's on a patch of a real preprocessed case of the data set (or,
without one, on random input): the largest absolute difference is returned and must stay under the format's
tolerance.

ONNX (:func:`export_onnx`) needs the optional packages onnx, onnxruntime and onnxscript
(``pip install 'segpipe[onnx]'``). It uses torch's ``torch.export``-based exporter (``dynamo=True``: the
TorchScript-based one is deprecated since torch 2.9), opset :data:`ONNX_OPSET`, one input ``patches`` with a
dynamic batch axis and spatial axes fixed at the patch size (the network needs them divisible by its total
stride; the sliding window only ever feeds patches of that size), one output ``logits``.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from segpipe.errors import fail
from segpipe.inference.models import load_models
from segpipe.io.atomic import atomic_path, verification_failed, verify_not_empty, verify_zip
from segpipe.workspace import Workspace

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4
# Measured (torch 2.13 CPU, onnx 1.23, onnxruntime 1.32, opset 18): the tiny test network ([4, 8, 16], patch
# [16, 24, 16], trained 2 iterations) differs from PyTorch by 1.6e-6 on a real hippocampus patch (logits up to
# 2.4), 2.5e-6 with batch 2; the hippocampus plan's full 3d_fullres network ([32, 64, 128, 256], patch
# [40, 56, 40], random weights) by 1.9e-5 (logits up to 6.6), its 2d network by 8.8e-6. Bigger networks and
# patches add float32 rounding (onnxruntime's convolutions sum in another order than PyTorch's), so the bound
# leaves a margin of 50x over the full-size network while a real conversion error (a wrong weight, a dropped
# normalization) moves logits by far more.
ONNX_TOLERANCE = 1e-3
ONNX_OPSET = 18  # the oldest opset torch's exporter writes natively; onnxruntime runs it since 1.14
ONNX_INPUT, ONNX_OUTPUT = "patches", "logits"
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: torch.onnx.export(dynamo=True) imports it
ONNX_INSTALL = "pip install 'segpipe[onnx]'"
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")  # quietened below --debug (see _quiet_exporter)


def _example_patch(ws: Workspace, data_identifier: str, patch: list[int], n_channels: int
                   ) -> tuple[torch.Tensor, str]:
    """A patch ``(1, c, *patch)`` from the middle of the first preprocessed case, or random input."""
    folder = ws.preprocessed(data_identifier)
    cases = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for meta in cases:
        try:
            from segpipe.preprocessing.store import load_case

            data, _, _ = load_case(folder, meta.stem)
        except Exception:  # noqa: BLE001 - any unreadable case: try the next, else random input
            continue
        if data.shape[0] != n_channels:
            break
        if len(patch) == 2:
            data = data[:, data.shape[1] // 2]
        box = []
        for n, p in zip(data.shape[1:], patch):
            a = max(0, (n - p) // 2)
            box.append(slice(a, a + p))
        x = np.zeros((n_channels, *patch), np.float32)
        take = (slice(None), *box)
        part = data[take]
        into = (slice(None), *(slice(0, s) for s in part.shape[1:]))
        x[into] = part
        return torch.from_numpy(x)[None], f"preprocessed case {meta.stem}"
    return torch.randn(1, n_channels, *patch, generator=torch.Generator().manual_seed(0)), "random input"


def _refuse_existing(out: Path, force: bool) -> None:
    """An existing ``out`` is only replaced with ``force``."""
    if out.exists() and not force:
        raise fail("the file exists", "choose another file name, or --force to replace it", file=out)


def _fold_network(ws: Workspace, config: str, fold: str, checkpoint: str) -> tuple[nn.Module, torch.Tensor, str]:
    """``(network, x, source)``: the fold's network on the CPU in eval mode without deep supervision (as
    prediction loads it), a check input ``x`` ``(1, c, *patch)`` float32 and where ``x`` comes from."""
    (model,) = load_models(ws, [config], [str(fold)], checkpoint, torch.device("cpu"))
    if model.previous is not None:
        raise fail(f"{config} is a cascade stage: its input includes the previous stage's segmentation",
                   "export each stage's network separately (the previous stage first) and run the chain yourself")
    net = model.networks[0].eval()
    n_channels = next(p for p in net.parameters() if p.ndim >= 3).shape[1]
    x, source = _example_patch(ws, model.config.data_identifier, list(model.config.patch_size), int(n_channels))
    return net, x, source


def export_torchscript(ws: Workspace, config: str, fold: str, out: Path, checkpoint: str = "final",
                       tolerance: float = TOLERANCE, force: bool = False) -> dict[str, Any]:
    """Trace ``config``'s ``fold`` to ``out`` (TorchScript); returns what was checked."""
    out = Path(out)
    _refuse_existing(out, force)
    net, x, source = _fold_network(ws, config, fold, checkpoint)
    with torch.inference_mode():
        expected = net(x)
    traced = torch.jit.trace(net, x, check_trace=False)
    with atomic_path(out, verify=verify_zip) as tmp:
        torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        with torch.inference_mode():
            got = loaded(x)
        diff = float((got - expected).abs().max())
        if not diff <= tolerance:
            raise fail(f"the traced network differs from the PyTorch network by {diff:.2e} (> {tolerance:.0e}) on "
                       f"{source}", "report this; nothing was written", file=out)
    return {"file": str(out), "format": "torchscript", "config": config, "fold": str(fold),
            "input_shape": list(x.shape), "checked_on": source, "max_abs_difference": diff}


def onnx_modules() -> tuple[ModuleType, ModuleType]:
    """``(onnx, onnxruntime)``, imported; onnxscript is only checked. A missing package is a clear error."""
    modules = {}
    for name in ONNX_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as e:
            raise fail(f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)}; {name} cannot be imported "
                       f"({e})", f"install them: {ONNX_INSTALL} (or use --format torchscript)") from None
    return modules["onnx"], modules["onnxruntime"]


def verify_onnx(tmp: Path) -> None:
    """The written file is a complete, valid ONNX model (``onnx.checker.check_model``, shape inference included)."""
    verify_not_empty(tmp)
    onnx, _ = onnx_modules()
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors and checker errors alike
        raise verification_failed(tmp, f"not a valid ONNX model: {e}") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep torch's exporter and its optimizer from logging their passes and skipped optional operators
    (torchvision's) and from warning about their own internals, unless segpipe runs with ``--debug``; errors
    still propagate."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write_onnx(net: nn.Module, x: torch.Tensor, path: Path, opset: int = ONNX_OPSET) -> None:
    """Export ``net`` traced on ``x`` ``(B, c, *patch)`` to ``path``: weights inside the one file (models up
    to ONNX's 2 GB limit), batch axis dynamic, spatial axes fixed at ``x``'s."""
    with _quiet_exporter():
        torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=opset, input_names=[ONNX_INPUT],
                          output_names=[ONNX_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX file at ``path`` with onnxruntime (CPU) on ``x`` ``(B, c, *patch)`` float32; logits
    ``(B, n_classes, *patch)``."""
    _, ort = onnx_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(x, np.float32)})
    return np.asarray(logits)


def _batch_of_two(x: torch.Tensor) -> torch.Tensor:
    """``(2, c, *patch)``: the patch ``x`` ``(1, c, *patch)`` and its mirror image along every spatial axis."""
    return torch.cat([x, torch.flip(x, dims=list(range(2, x.ndim)))])


def export_onnx(ws: Workspace, config: str, fold: str, out: Path, checkpoint: str = "final",
                tolerance: float = ONNX_TOLERANCE, force: bool = False) -> dict[str, Any]:
    """Export ``config``'s ``fold`` to ``out`` (ONNX, opset :data:`ONNX_OPSET`); returns what was checked.

    The network is exported from a batch of two patches (a real one and its mirror image) and the written file
    is run by onnxruntime with batch sizes 1 and 2; the largest absolute difference from the PyTorch network's
    logits must be at most ``tolerance`` (see :data:`ONNX_TOLERANCE` for what was measured), else nothing is
    written. Without onnx, onnxruntime or onnxscript installed, nothing is loaded and the error names the fix.
    """
    out = Path(out)
    onnx_modules()
    _refuse_existing(out, force)
    net, x, source = _fold_network(ws, config, fold, checkpoint)
    x2 = _batch_of_two(x)
    with torch.inference_mode():
        expected = net(x2).numpy()
    with atomic_path(out, verify=verify_onnx) as tmp:
        try:
            _write_onnx(net, x2, tmp)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; none leaves a file behind
            raise fail(f"torch could not export the network of {config} fold {fold} to ONNX: {str(e)[:500]}",
                       "use --format torchscript, or report this with --debug's traceback", file=out) from e
        verify_onnx(tmp)  # before onnxruntime reads it (atomic_path checks it again once it is on disk)
        try:
            got = [onnx_logits(tmp, x2[:1].numpy()), onnx_logits(tmp, x2.numpy())]
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types (InvalidGraph, Fail, ...)
            raise fail(f"onnxruntime cannot run the exported network with batch sizes 1 and 2: {str(e)[:500]}",
                       "report this; nothing was written (--format torchscript may still work)", file=out) from e
        diff = max(float(np.abs(got[0] - expected[:1]).max()), float(np.abs(got[1] - expected).max()))
        if not diff <= tolerance:
            raise fail(f"the ONNX network differs from the PyTorch network by {diff:.2e} (> {tolerance:.0e}) on "
                       f"{source} and its mirror image",
                       "report this; nothing was written (--format torchscript may still work)", file=out)
    return {"file": str(out), "format": "onnx", "config": config, "fold": str(fold), "input_shape": list(x2.shape),
            "batch_sizes_checked": [1, 2], "opset": ONNX_OPSET, "checked_on": source, "max_abs_difference": diff}


def export_network(ws: Workspace, config: str, fold: str, out: Path, fmt: str = "torchscript",
                   checkpoint: str = "final", force: bool = False) -> dict[str, Any]:
    """Export one fold's network in format ``fmt`` (one of :data:`FORMATS`) with its own check and tolerance."""
    if fmt == "torchscript":
        return export_torchscript(ws, config, fold, out, checkpoint=checkpoint, force=force)
    if fmt == "onnx":
        return export_onnx(ws, config, fold, out, checkpoint=checkpoint, force=force)
    raise fail(f"unknown network format '{fmt}'", f"use one of {', '.join(FORMATS)}")
