"""Device and numeric precision: ``--device auto|cpu|cuda`` and ``--precision auto|fp32|bf16|fp16``.

``auto`` precision is float16 mixed precision (AMP, with a gradient scaler) on CUDA, bfloat16 autocasting on CPUs
with native bfloat16 (``avx512_bf16`` / ``amx_bf16``) and float32 on other CPUs. Measured for the CPU default on
this project's 2-core AMD EPYC (avx512_bf16), hippocampus 3d_fullres, fold 0, 500 iterations of batch 2, the
same seed: validation Dice 0.8374 with bf16 and 0.8368 with fp32 (52 cases), 4.4 against 9.0 minutes for the
whole command (docs/benchmarks.md). On CPUs without native bfloat16 it is emulated and slower than float32, so
``auto`` stays float32 there.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from segpipe.errors import fail

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise fail("--device cuda, but no CUDA GPU is visible to torch", "use --device cpu or auto, or install a "
                   "CUDA build of torch")
    if name not in ("cpu", "cuda"):
        raise fail(f"unknown device '{name}'", "use auto, cpu or cuda")
    return torch.device(name)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32)."""
    if precision not in PRECISIONS:
        raise fail(f"unknown precision '{precision}'", f"use one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise fail("--precision fp16 needs a CUDA GPU", "use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16
