"""Learning-rate schedule and training length: epochs x iterations, or a wall-clock budget."""
from __future__ import annotations

import re

from segpipe.errors import fail

POLY_EXPONENT = 0.9


def parse_duration(text: str) -> float:
    """'20m', '1h30m', '90s', '2h', or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != t.replace(" ", ""):
        raise fail(f"cannot read the duration '{text}'", "write e.g. 20m, 1h30m, 45s")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[u] for a, u in parts)


def poly_lr(initial: float, progress: float, exponent: float = POLY_EXPONENT) -> float:
    """Polynomial decay: ``initial * (1 - progress) ** exponent`` with progress in [0, 1]."""
    return initial * (1 - min(max(progress, 0.0), 1.0)) ** exponent


def training_progress(iteration: int, total_iterations: int | None, elapsed: float, budget: float | None) -> float:
    """How far training is, in [0, 1]: the larger of iterations done and budget used."""
    p = 0.0
    if total_iterations:
        p = max(p, iteration / total_iterations)
    if budget:
        p = max(p, elapsed / budget)
    return min(p, 1.0)
