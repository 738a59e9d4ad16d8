"""One fold's network as a TorchScript file (``segpipe export-network``), for serving without segpipe.

The file maps a batch of preprocessed patches ``(B, c, *patch)`` float32 (the configuration's spacing, its
normalization, spatial axes in array order) to logits ``(B, n_classes, *patch)``; preprocessing, sliding
window, mirroring and export to the image's geometry stay segpipe's. Before the file replaces anything, the
traced network is loaded back and its output compared with the PyTorch network's on a patch of a real
preprocessed case of the data set (or, without one, on random input): the largest absolute difference is
returned and must stay under ``tolerance``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.errors import fail
from segpipe.inference.models import load_models
from segpipe.io.atomic import atomic_path, verify_zip
from segpipe.workspace import Workspace

TOLERANCE = 1e-4


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


def export_torchscript(ws: Workspace, config: str, fold: str, out: Path, checkpoint: str = "final",
                       tolerance: float = TOLERANCE, force: bool = False) -> dict[str, Any]:
    """Trace ``config``'s ``fold`` to ``out`` (TorchScript); returns what was checked."""
    out = Path(out)
    if out.exists() and not force:
        raise fail("the file exists", "choose another file name, or --force to replace it", file=out)
    (model,) = load_models(ws, [config], [str(fold)], checkpoint, torch.device("cpu"))
    if model.previous is not None:
        raise fail(f"{config} is a cascade stage: its input includes the previous stage's segmentation",
                   "export each stage's network separately (the previous stage first) and run the chain yourself")
    net = model.networks[0].eval()
    n_channels = next(p for p in net.parameters() if p.ndim >= 3).shape[1]
    x, source = _example_patch(ws, model.config.data_identifier, list(model.config.patch_size), int(n_channels))
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
    return {"file": str(out), "config": config, "fold": str(fold), "input_shape": list(x.shape),
            "checked_on": source, "max_abs_difference": diff}
