"""The report's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state) and returned as PNG bytes.

Axis order follows :mod:`segpipe.axes`: spacings and shapes are in array order, ``(z, y, x)`` for 3D data and
``(y, x)`` for 2D; spacings in mm, sizes in voxels.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DPI = 80
FOLD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")


def axis_names(ndim: int) -> list[str]:
    """Names of the array axes: ``z, y, x`` (3D) or ``y, x`` (2D)."""
    return ["z", "y", "x"][3 - ndim:] if ndim <= 3 else [f"axis {i}" for i in range(ndim)]


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _hist(ax: Any, values: Sequence[float], colour: str) -> None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # every case alike: one bar, centred
        pad = max(0.5, abs(lo) * 0.05)
        ax.hist(v, bins=1, range=(lo - pad / 4, lo + pad / 4), color=colour)
        ax.set_xlim(lo - pad, lo + pad)
    else:
        ax.hist(v, bins=min(30, max(5, v.size // 2)), color=colour)
    ax.set_ylabel("cases")


def geometry_plot(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[float]]) -> bytes:
    """Histograms over the cases: spacing per axis (mm, top row) and shape after cropping to the nonzero box
    per axis (voxels, bottom row); one column per array axis."""
    ndim = len(spacings[0]) if spacings else len(shapes[0])
    names = axis_names(ndim)
    fig = new_figure(3.3 * ndim, 5.2)
    for i in range(ndim):
        ax = fig.add_subplot(2, ndim, i + 1)
        _hist(ax, [s[i] for s in spacings], "#4878a8")
        ax.set_title(f"spacing, axis {names[i]} (mm)", fontsize=10)
        ax = fig.add_subplot(2, ndim, ndim + i + 1)
        _hist(ax, [s[i] for s in shapes], "#6a9f58")
        ax.set_title(f"shape after crop, axis {names[i]} (voxels)", fontsize=10)
    return to_png(fig)


def intensity_plot(samples: Mapping[str, np.ndarray], stats: Mapping[str, Mapping[str, Any]]) -> bytes:
    """One histogram per channel of foreground intensities (``samples``: channel name -> values), with the
    fingerprint's 0.5/99.5 percentiles and mean (``stats``: channel name -> fingerprint intensity entry)
    marked."""
    names = list(samples)
    fig = new_figure(4.6 * max(1, len(names)), 3.2)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, max(1, len(names)), i + 1)
        v = np.asarray(samples[name], dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=80, color="#7a68a6", alpha=0.9)
        st = stats.get(name) or {}
        for key, style, label in (("percentile_00_5", "--", "0.5 / 99.5 percentile"),
                                  ("percentile_99_5", "--", None), ("mean", "-", "mean")):
            val = st.get(key)
            if isinstance(val, (int, float)):
                ax.axvline(float(val), color="#c0392b", linestyle=style, linewidth=1.2, label=label)
        ax.set_title(f"channel {name}: foreground intensities", fontsize=10)
        ax.set_xlabel("intensity")
        ax.set_ylabel("voxels (sample)")
        if st:
            ax.legend(fontsize=8)
    return to_png(fig)


def training_plot(config: str, histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Training curves of every fold of ``config``: train (solid) and validation (dashed) loss per epoch, and
    the pseudo Dice of the per-epoch validation patches (dots) with its moving average (line)."""
    fig = new_figure(12, 3.8)
    ax_loss, ax_dice = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (fold, history) in enumerate(histories.items()):
        colour = FOLD_COLOURS[i % len(FOLD_COLOURS)]
        ep = [h.get("epoch", k) for k, h in enumerate(history)]

        def series(key: str, history: Sequence[Mapping[str, Any]] = history) -> list[float]:
            return [float(h[key]) if isinstance(h.get(key), (int, float)) else float("nan") for h in history]

        marker = "o" if len(ep) < 3 else None
        ax_loss.plot(ep, series("train_loss"), color=colour, label=f"fold {fold} train", marker=marker)
        ax_loss.plot(ep, series("val_loss"), color=colour, linestyle="--", label=f"fold {fold} validation",
                     marker=marker)
        ax_dice.plot(ep, series("pseudo_dice"), ".", color=colour, alpha=0.6)
        ax_dice.plot(ep, series("ema_pseudo_dice"), color=colour, label=f"fold {fold}", marker=marker)
    from matplotlib.ticker import MaxNLocator

    epochs = [float(h.get("epoch", k)) for history in histories.values() for k, h in enumerate(history)]
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs and max(epochs) - min(epochs) < 2:  # a few epochs: whole numbers, not -0.04 ... 0.04
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax_loss.set_title(f"{config}: loss (solid: training, dashed: validation)", fontsize=10)
    ax_loss.set_xlabel("epoch")
    ax_dice.set_title(f"{config}: pseudo Dice of validation patches (dots) and its moving average", fontsize=10)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend(fontsize=8, loc="lower right", ncol=2)
    if len(histories) <= 3:
        ax_loss.legend(fontsize=8)
    return to_png(fig)


def dice_boxplot(per_config: Mapping[str, Mapping[str, Sequence[float]]], metric: str = "Dice") -> bytes:
    """Box plots of a per-case metric, one box per class, one panel per configuration, each case a dot
    (``per_config``: configuration -> class -> values over the cross-validation cases)."""
    n = max(1, len(per_config))
    n_classes = max((len(v) for v in per_config.values()), default=1)
    fig = new_figure(max(5.0, 3.0 + 1.0 * n_classes) * min(n, 3), 3.6 * ((n + 2) // 3))
    rng = np.random.default_rng(0)
    for i, (config, per_class) in enumerate(per_config.items()):
        ax = fig.add_subplot((n + 2) // 3, min(n, 3), i + 1)
        names = list(per_class)
        values = [np.asarray([v for v in per_class[c] if v is not None and np.isfinite(v)], float) for c in names]
        ax.boxplot([v if v.size else np.array([np.nan]) for v in values], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 4 else 0)
        for k, v in enumerate(values):
            ax.plot(k + 1 + rng.uniform(-0.12, 0.12, v.size), v, "o", color="#1f77b4", alpha=0.55, markersize=4)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{metric} per case")
        ax.set_title(f"{config}", fontsize=10)
    return to_png(fig)


BASELINES = ("3d_fullres", "2d")  # nnU-Net's own plans among the budget candidates: named in the plot


def budget_plot(candidates: Sequence[Mapping[str, Any]], chosen: str | None) -> bytes:
    """The budget planner's candidates: expected training iterations in the budget against fidelity (how close
    to nnU-Net's plan); measured candidates filled, estimated ones hollow, the chosen one in red and named (with
    nnU-Net's own plans)."""
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for c in candidates:
        x, y = c.get("expected_iterations"), c.get("fidelity")
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            continue
        is_chosen = c.get("name") == chosen
        colour = "#c0392b" if is_chosen else "#2b5d8a"
        ax.scatter([max(float(x), 1.0)], [float(y)], s=80 if is_chosen else 40, edgecolors=colour,
                   facecolors=colour if c.get("measured") else "none", zorder=3)
        if is_chosen or c.get("name") in BASELINES:  # the others are named in the table below the plot
            ax.annotate(str(c.get("name", "")), (max(float(x), 1.0), float(y)), textcoords="offset points",
                        xytext=(6, 4), fontsize=8, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("expected training iterations in the budget (log scale)")
    ax.set_ylabel("fidelity to nnU-Net's plan")
    ax.set_title("budget candidates (filled: speed measured on this machine; red: chosen)", fontsize=10)
    ax.grid(alpha=0.3)
    return to_png(fig)
