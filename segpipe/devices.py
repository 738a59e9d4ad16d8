"""Device and numeric precision: ``--device auto|cpu|cuda`` and ``--precision auto|fp32|bf16|fp16``.

``auto`` precision is float16 mixed precision (AMP) on CUDA and float32 on the CPU. On CPUs with native
bfloat16 (``avx512_bf16`` / ``amx_bf16``), ``bf16`` autocasting makes training about 1.6x faster (measured on
this project's 2-core machine); it is opt-in because float32 is what the reported accuracies were measured with.
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
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise fail("--precision fp16 needs a CUDA GPU", "use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16
