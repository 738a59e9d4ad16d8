"""Test-time adaptation by entropy minimisation (TENT, Wang et al., ICLR 2021) for segpipe's U-Nets.

A trained network is adapted to unlabelled images of a new domain without its training data: the entropy of
its prediction on patches of the target images is minimised with respect to the affine parameters (weight and
bias) of its normalization layers only; every other parameter stays frozen. The prediction whose entropy is
minimised is the *mean* softmax over mirrorings of the patch (the test-time augmentation ``predict`` uses),
so a network cannot lower the loss by being confidently inconsistent across mirrorings.

Layouts: a patch batch is channels first, ``(B, C, z, y, x)`` (3D) or ``(B, C, y, x)`` (2D); a preprocessed
case is ``(C, Z, Y, X)`` (2D configurations take one ``z`` slice per patch); probabilities are
``(B, n_outputs, *patch)``, voxel entropies ``(B, *patch)``.

segpipe's networks normalize with ``InstanceNorm`` (``affine=True``), whose statistics are the patch's own in
both train and eval mode, so the networks are adapted in eval mode. A plug-in network with ``BatchNorm`` keeps
its running statistics (eval mode) and only its affine parameters are adapted. Region-based models (one
sigmoid per region) minimise the binary entropy summed over regions.

Nothing here reads or writes files: :mod:`segpipe.adaptation.run` is the stage around it.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.GroupNorm, nn.LayerNorm)
PROB_EPS = 1e-8  # probabilities are clamped to this before the log


@dataclass(frozen=True)
class TentSettings:
    """How to adapt: ``steps`` Adam steps at learning rate ``lr``, each on ``patches`` patches of the plan's
    patch size drawn uniformly from the target cases; the entropy of the mean over ``mirrorings`` mirrorings
    (None: all ``2^k``; fewer: the identity plus ``mirrorings - 1`` others drawn anew each step); ``seed``
    makes the patches and mirrorings reproducible."""

    steps: int = 100
    lr: float = 1e-3
    patches: int = 2
    mirrorings: int | None = None
    seed: int = 0

    def check(self) -> TentSettings:
        """Raise ``ValueError`` naming a setting that cannot work."""
        if self.steps < 1 or self.patches < 1:
            raise ValueError(f"steps ({self.steps}) and patches ({self.patches}) must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr ({self.lr}) must be a positive number")
        if self.mirrorings is not None and self.mirrorings < 1:
            raise ValueError(f"mirrorings ({self.mirrorings}) must be >= 1")
        return self


def norm_affine_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The affine parameters of ``net``'s normalization layers by their ``state_dict`` name
    (``encoder.stages.0.0.1.weight``, ``...bias``); empty when it has none."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in net.named_modules():
        if not isinstance(mod, NORM_TYPES):
            continue
        for p_name in ("weight", "bias"):
            p = getattr(mod, p_name, None)
            if isinstance(p, nn.Parameter):
                out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return out


def prepare_network(net: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of ``net`` but its normalization layers' affine ones, put it in eval mode, and
    return the parameters to adapt. ``ValueError`` when it has no affine normalization layer."""
    params = norm_affine_parameters(net)
    if not params:
        raise ValueError("the network has no normalization layer with affine parameters to adapt")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    return list(params.values())


def all_mirrorings(ndim: int) -> list[tuple[int, ...]]:
    """Every combination of flipped spatial axes of a ``(B, C, *spatial)`` batch with ``ndim`` spatial axes,
    as tensor dims to flip; ``()`` (the identity) first: ``2^ndim`` tuples."""
    dims = range(2, 2 + ndim)
    return [c for k in range(ndim + 1) for c in itertools.combinations(dims, k)]


def choose_mirrorings(ndim: int, n: int | None, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``n`` mirrorings (None or ``>= 2^ndim``: all): the identity and ``n - 1`` others drawn without
    replacement."""
    every = all_mirrorings(ndim)
    if n is None or n >= len(every):
        return every
    others = rng.choice(len(every) - 1, size=n - 1, replace=False) + 1
    return [every[0], *(every[int(i)] for i in sorted(others))]


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    return out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: full resolution first


def mirrored_probabilities(net: nn.Module, x: torch.Tensor, dims: tuple[int, ...], sigmoid: bool = False,
                           amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The network's probabilities for ``x`` ``(B, C, *patch)`` mirrored along ``dims`` and mirrored back:
    ``(B, n_outputs, *patch)`` float32 (softmax over outputs, or a sigmoid each with ``sigmoid``)."""
    xi = torch.flip(x, dims) if dims else x
    autocast = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        logits = _logits(net, xi)
    logits = logits.float()
    p = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)
    return torch.flip(p, dims) if dims else p


def mean_probabilities(net: nn.Module, x: torch.Tensor, mirrorings: Sequence[tuple[int, ...]],
                       sigmoid: bool = False, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The mean over ``mirrorings`` of :func:`mirrored_probabilities`: ``(B, n_outputs, *patch)`` float32."""
    if not mirrorings:
        raise ValueError("at least one mirroring")
    total = mirrored_probabilities(net, x, mirrorings[0], sigmoid, amp_dtype)
    for dims in mirrorings[1:]:
        total = total + mirrored_probabilities(net, x, dims, sigmoid, amp_dtype)
    return total / len(mirrorings)


def voxel_entropy(p: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Entropy (nats) per voxel of probabilities ``(B, n_outputs, *S)`` -> ``(B, *S)``: of the categorical
    distribution, or with ``sigmoid`` the binary entropies of the outputs summed."""
    q = p.clamp_min(PROB_EPS)
    if not sigmoid:
        return -(p * q.log()).sum(dim=1)
    r = (1 - p).clamp_min(PROB_EPS)
    return -(p * q.log() + (1 - p) * r.log()).sum(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B, *S)`` over the voxels where ``mask`` ``(B, *S)`` is true (padding is not)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def entropy_gradient(p: torch.Tensor, mask: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """The gradient of ``masked_mean(voxel_entropy(p), mask)`` with respect to ``p`` ``(B, n_outputs, *S)``:
    ``-(log p + 1)`` (categorical) or ``log((1 - p) / p)`` (binary) per voxel, times ``mask / mask.sum()``."""
    m = mask.to(p.dtype).unsqueeze(1) / mask.to(p.dtype).sum().clamp_min(1.0)
    q = p.clamp_min(PROB_EPS)
    if not sigmoid:
        return -(q.log() + 1) * m
    return ((1 - p).clamp_min(PROB_EPS).log() - q.log()) * m


def entropy_backward(net: nn.Module, x: torch.Tensor, valid: torch.Tensor, mirrorings: Sequence[tuple[int, ...]],
                     sigmoid: bool = False, amp_dtype: torch.dtype | None = None,
                     scale: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
    """Accumulate into the parameters' ``.grad`` the exact gradient of the loss (the masked mean entropy of the
    mean probabilities over ``mirrorings`` of ``x`` ``(B, C, *patch)``, ``valid`` ``(B, *patch)``) and return the
    loss, holding one mirroring's graph at a time: the mean is computed first without a graph; then, as the loss
    depends on mirroring ``m`` only through the mean, each mirroring is run again and back-propagated with the
    loss's gradient with respect to the mean divided by the number of mirrorings (the memory of one mirroring's
    forward-backward pass, for about one more forward pass per mirroring). ``scale``: e.g. a grad scaler's
    ``scale``."""
    with torch.no_grad():
        p_mean = mean_probabilities(net, x, mirrorings, sigmoid, amp_dtype)
        loss = float(masked_mean(voxel_entropy(p_mean, sigmoid), valid))
        grad = entropy_gradient(p_mean, valid, sigmoid) / len(mirrorings)
        del p_mean
    for dims in mirrorings:
        p = mirrored_probabilities(net, x, dims, sigmoid, amp_dtype)
        scale((p * grad).sum()).backward()
    return loss


def _patch_view(case: np.ndarray, patch: Sequence[int], rng: np.random.Generator | None) -> np.ndarray:
    """The part of ``case`` ``(C, Z, Y, X)`` a patch covers: for a 2D patch one ``z`` slice ``(C, Y, X)``;
    along each axis a random window (``rng``) or the centred one (``rng`` None), the whole axis when it is
    shorter than the patch."""
    if len(patch) == 2:
        z = case.shape[1] // 2 if rng is None else int(rng.integers(case.shape[1]))
        case = case[:, z]
    slices = [slice(None)]
    for size, p in zip(case.shape[1:], patch):
        if size <= p:
            slices.append(slice(None))
            continue
        start = (size - p) // 2 if rng is None else int(rng.integers(size - p + 1))
        slices.append(slice(start, start + p))
    return case[tuple(slices)]


def crop_or_pad(case: np.ndarray, patch: Sequence[int], rng: np.random.Generator | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One patch of ``case`` ``(C, Z, Y, X)``: ``(data (C, *patch) float32, valid (*patch) bool)``. Axes
    shorter than the patch are zero-padded, centred (as the sliding window pads); ``valid`` is False on the
    padding. ``rng`` None: the centred patch."""
    view = np.asarray(_patch_view(case, patch, rng), dtype=np.float32)
    data = np.zeros((view.shape[0], *patch), dtype=np.float32)
    valid = np.zeros(tuple(patch), dtype=bool)
    inner = tuple(slice((p - s) // 2, (p - s) // 2 + s) for s, p in zip(view.shape[1:], patch))
    data[(slice(None),) + inner] = view
    valid[inner] = True
    return data, valid


def _batch(cases: Sequence[np.ndarray], patch: Sequence[int], n: int, rng: np.random.Generator,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random patches of randomly chosen cases: ``(x (n, C, *patch), valid (n, *patch))``."""
    picked = [crop_or_pad(cases[int(rng.integers(len(cases)))], patch, rng) for _ in range(n)]
    x = torch.from_numpy(np.stack([d for d, _ in picked])).to(device)
    valid = torch.from_numpy(np.stack([v for _, v in picked])).to(device)
    return x, valid


@torch.no_grad()
def mean_entropy(net: nn.Module, cases: Sequence[np.ndarray], patch: Sequence[int], device: torch.device,
                 sigmoid: bool = False, amp_dtype: torch.dtype | None = None) -> float:
    """The mean voxel entropy (nats) of the mean over all mirrorings, on the centred patch of each case
    ``(C, Z, Y, X)`` (padding left out): a deterministic score of how sure ``net`` is on the target data."""
    net.eval()
    total, count = 0.0, 0
    every = all_mirrorings(len(patch))
    for case in cases:
        data, valid = crop_or_pad(case, patch)
        x = torch.from_numpy(data[None]).to(device)
        h = voxel_entropy(mean_probabilities(net, x, every, sigmoid, amp_dtype), sigmoid)[0]
        m = torch.from_numpy(valid).to(device)
        total += float(h[m].sum())
        count += int(m.sum())
    return total / max(1, count)


def adapt_network(net: nn.Module, cases: Sequence[np.ndarray], patch: Sequence[int], settings: TentSettings,
                  device: torch.device, sigmoid: bool = False, amp_dtype: torch.dtype | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Adapt ``net`` (on ``device``) in place to the preprocessed target ``cases`` (each ``(C, Z, Y, X)``):
    ``settings.steps`` Adam steps on the entropy of the mean prediction over mirrorings of random patches,
    with respect to the normalization layers' affine parameters only (gradients by :func:`entropy_backward`,
    one mirroring's graph at a time). Returns the loss of every step (before that step's update);
    ``on_step(step, loss)`` is called after each (1-based)."""
    settings.check()
    if not cases:
        raise ValueError("no target case to adapt to")
    params = prepare_network(net)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    for step in range(1, settings.steps + 1):
        x, valid = _batch(cases, patch, settings.patches, rng, device)
        mirrorings = choose_mirrorings(len(patch), settings.mirrorings, rng)
        optimizer.zero_grad(set_to_none=True)
        losses.append(entropy_backward(net, x, valid, mirrorings, sigmoid, amp_dtype, scale=scaler.scale))
        scaler.step(optimizer)
        scaler.update()
        if on_step is not None:
            on_step(step, losses[-1])
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    return losses


class StepLog:
    """``on_step`` for :func:`adapt_network`: a log line every tenth of the run (and the last step), with the
    mean loss since the previous line and the time per step."""

    def __init__(self, label: str, steps: int, on_log: Callable[[], None] | None = None):
        self.label, self.steps, self.on_log = label, steps, on_log  # on_log: e.g. a Heartbeat's beat
        self.every = max(1, steps // 10)
        self.start = self.last_t = time.monotonic()
        self.recent: list[float] = []
        self.step = 0

    def __call__(self, step: int, loss: float) -> None:
        self.step = step
        self.recent.append(loss)
        if step % self.every and step != self.steps:
            return
        now = time.monotonic()
        log.info("%s: step %d/%d, entropy %.4f (mean of the last %d), %.2f s/step", self.label, step, self.steps,
                 float(np.mean(self.recent)), len(self.recent), (now - self.last_t) / len(self.recent))
        self.recent, self.last_t = [], now
        if self.on_log is not None:
            self.on_log()

    def status(self) -> str:
        """For :class:`segpipe.progress.Heartbeat`."""
        return f"{self.label}: step {self.step}/{self.steps}, {time.monotonic() - self.start:.0f} s elapsed"
