"""Training logs: ``log.jsonl`` (one JSON object per epoch) and ``progress.png``."""
from __future__ import annotations

import io
import json
from pathlib import Path

from segpipe.io.atomic import atomic_write_bytes, atomic_write_text


def write_log(path: Path, history: list[dict]) -> None:
    """Rewrite the whole log atomically from the history (so a resumed run never duplicates epochs)."""
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def plot_progress(path: Path, history: list[dict]) -> None:
    """Losses, pseudo-Dice and learning rate per epoch."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    a1.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a1.plot(ep, [h["val_loss"] for h in history], label="validation loss")
    b = a1.twinx()
    b.plot(ep, [h["pseudo_dice"] for h in history], "g.", label="pseudo Dice")
    b.plot(ep, [h["ema_pseudo_dice"] for h in history], "g-", label="pseudo Dice (EMA)")
    b.set_ylim(0, 1)
    a1.legend(loc="upper left")
    b.legend(loc="upper right")
    a2.plot(ep, [h["lr"] for h in history], label="learning rate")
    a2.set_xlabel("epoch")
    a2.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
