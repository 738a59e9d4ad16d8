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

Safeguards against collapse (on by default). Plain entropy minimisation on an imbalanced segmentation task
drifts towards the most confident answer, background: the foreground shrinks while the entropy falls. Two
guards, both measured against the *unadapted* network, so they need no label:

* a class-balance term (information-maximisation / source-prior style): the loss adds
  ``balance_weight * KL(r || q)``, ``q`` the batch's mean predicted class distribution (the mean over the valid
  voxels of the mean probabilities over mirrorings) and ``r`` the same distribution predicted on the same patches
  by a frozen copy of the source network (identity mirroring: one extra no-grad forward pass per step). It is
  zero while the adapted network predicts as much of each class as the source did, and grows as ``-log q`` when a
  class vanishes. Region-based models use a Bernoulli KL per region.
* a stopping rule: every ``check_every`` steps the fraction of voxels predicted as each foreground class (argmax,
  or sigmoid > 0.5, identity mirroring) on the centred patch of each target case is compared with the unadapted
  network's; when one class's fraction moves more than ``max_drift`` (relative) from it, adaptation stops and the
  parameters of the last check that passed are restored (the source's, when it is the first check).

Nothing here reads or writes files: :mod:`segpipe.adaptation.run` is the stage around it.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.GroupNorm, nn.LayerNorm)
PROB_EPS = 1e-8  # probabilities are clamped to this before the log


BALANCE_WEIGHT = 10.0  # default weight of the class-balance term (docs/benchmarks.md: chosen on set A)
MAX_DRIFT = 0.05  # default stopping threshold: relative change of a class's predicted fraction
CHECK_EVERY = 10  # default steps between two checks of the stopping rule
MONITOR_CASES = 32  # at most this many target cases (evenly spaced) are scored by the stopping rule


@dataclass(frozen=True)
class TentSettings:
    """How to adapt: ``steps`` Adam steps at learning rate ``lr``, each on ``patches`` patches of the plan's
    patch size drawn uniformly from the target cases; the entropy of the mean over ``mirrorings`` mirrorings
    (None: all ``2^k``; fewer: the identity plus ``mirrorings - 1`` others drawn anew each step); ``seed``
    makes the patches and mirrorings reproducible. ``balance_weight``: weight of the class-balance term (0: plain
    TENT); ``max_drift``: the stopping rule's relative limit on a class's predicted fraction (None: no stopping
    rule), checked every ``check_every`` steps and after the last one (module docstring)."""

    steps: int = 100
    lr: float = 1e-3
    patches: int = 2
    mirrorings: int | None = None
    seed: int = 0
    balance_weight: float = BALANCE_WEIGHT
    max_drift: float | None = MAX_DRIFT
    check_every: int = CHECK_EVERY

    def check(self) -> TentSettings:
        """Raise ``ValueError(message, field)`` naming a setting that cannot work (``field``: its name)."""
        if self.steps < 1:
            raise ValueError(f"steps ({self.steps}) must be >= 1", "steps")
        if self.patches < 1:
            raise ValueError(f"patches ({self.patches}) must be >= 1", "patches")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr ({self.lr}) must be a positive number", "lr")
        if self.mirrorings is not None and self.mirrorings < 1:
            raise ValueError(f"mirrorings ({self.mirrorings}) must be >= 1", "mirrorings")
        if not (math.isfinite(self.balance_weight) and self.balance_weight >= 0):
            raise ValueError(f"balance weight ({self.balance_weight}) must be a number >= 0", "balance_weight")
        if self.max_drift is not None and not (math.isfinite(self.max_drift) and self.max_drift > 0):
            raise ValueError(f"max drift ({self.max_drift}) must be a positive number", "max_drift")
        if self.check_every < 1:
            raise ValueError(f"check every ({self.check_every}) must be >= 1", "check_every")
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


def class_distribution(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of probabilities ``p`` ``(B, n_outputs, *S)`` over the voxels where ``mask`` ``(B, *S)`` is
    true: ``(n_outputs,)``, the batch's predicted class distribution (softmax) or region fractions (sigmoid)."""
    m = mask.to(p.dtype).unsqueeze(1)
    dims = [0, *range(2, p.dim())]
    return (p * m).sum(dim=dims) / m.sum().clamp_min(1.0)


def balance_kl(q: torch.Tensor, r: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """``KL(r || q)`` of two class distributions ``(n_outputs,)`` (categorical; with ``sigmoid`` a Bernoulli KL
    per region, summed): 0 when ``q == r``, growing as ``-r log q`` when ``q`` loses a class ``r`` has."""
    qc, rc = q.clamp_min(PROB_EPS), r.clamp_min(PROB_EPS)
    out = (r * (rc.log() - qc.log())).sum()
    if sigmoid:
        q1, r1 = (1 - q).clamp_min(PROB_EPS), (1 - r).clamp_min(PROB_EPS)
        out = out + ((1 - r) * (r1.log() - q1.log())).sum()
    return out


def balance_gradient(p: torch.Tensor, mask: torch.Tensor, r: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """The gradient of ``balance_kl(class_distribution(p, mask), r)`` with respect to ``p``
    ``(B, n_outputs, *S)``: ``dKL/dq`` per output (``-r / q``; binary: ``-r / q + (1 - r) / (1 - q)``) times
    ``mask / mask.sum()`` per voxel."""
    q = class_distribution(p, mask).clamp_min(PROB_EPS)
    dq = -r / q
    if sigmoid:
        dq = dq + (1 - r) / (1 - q).clamp_min(PROB_EPS)
    m = mask.to(p.dtype).unsqueeze(1) / mask.to(p.dtype).sum().clamp_min(1.0)
    return dq.view(1, -1, *([1] * (p.dim() - 2))) * m


def objective_backward(net: nn.Module, x: torch.Tensor, valid: torch.Tensor, mirrorings: Sequence[tuple[int, ...]],
                       sigmoid: bool = False, amp_dtype: torch.dtype | None = None,
                       scale: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                       prior: torch.Tensor | None = None, balance_weight: float = 0.0) -> tuple[float, float]:
    """Accumulate into the parameters' ``.grad`` the exact gradient of the loss ``entropy + balance_weight *
    balance``, ``entropy`` the masked mean entropy of the mean probabilities over ``mirrorings`` of ``x``
    ``(B, C, *patch)`` (``valid`` ``(B, *patch)``) and ``balance`` = :func:`balance_kl` of their
    :func:`class_distribution` from ``prior`` ``(n_outputs,)`` (None or weight 0: no balance term); return
    ``(entropy, balance)``. One mirroring's graph at a time: the mean is computed first without a graph; then, as
    the loss depends on mirroring ``m`` only through the mean, each mirroring is run again and back-propagated
    with the loss's gradient with respect to the mean divided by the number of mirrorings (the memory of one
    mirroring's forward-backward pass, for about one more forward pass per mirroring). ``scale``: e.g. a grad
    scaler's ``scale``."""
    with torch.no_grad():
        p_mean = mean_probabilities(net, x, mirrorings, sigmoid, amp_dtype)
        entropy = float(masked_mean(voxel_entropy(p_mean, sigmoid), valid))
        grad = entropy_gradient(p_mean, valid, sigmoid)
        balance = 0.0
        if prior is not None:
            balance = float(balance_kl(class_distribution(p_mean, valid), prior, sigmoid))
            if balance_weight > 0:
                grad = grad + balance_weight * balance_gradient(p_mean, valid, prior, sigmoid)
        grad = grad / len(mirrorings)
        del p_mean
    for dims in mirrorings:
        p = mirrored_probabilities(net, x, dims, sigmoid, amp_dtype)
        scale((p * grad).sum()).backward()
    return entropy, balance


def entropy_backward(net: nn.Module, x: torch.Tensor, valid: torch.Tensor, mirrorings: Sequence[tuple[int, ...]],
                     sigmoid: bool = False, amp_dtype: torch.dtype | None = None,
                     scale: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> float:
    """:func:`objective_backward` without the balance term (plain TENT): accumulate the entropy's gradient and
    return the entropy."""
    return objective_backward(net, x, valid, mirrorings, sigmoid, amp_dtype, scale)[0]


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


def monitor_patches(cases: Sequence[np.ndarray], patch: Sequence[int], device: torch.device,
                    limit: int = MONITOR_CASES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The centred patch of each case (at most ``limit`` cases, evenly spaced): ``[(x (1, C, *patch), valid
    (1, *patch))]``, the fixed data the stopping rule scores."""
    idx = np.unique(np.linspace(0, len(cases) - 1, min(limit, len(cases))).round().astype(int))
    out = []
    for i in idx:
        data, valid = crop_or_pad(cases[int(i)], patch)
        out.append((torch.from_numpy(data[None]).to(device), torch.from_numpy(valid[None]).to(device)))
    return out


@torch.no_grad()
def predicted_fractions(net: nn.Module, patches: Sequence[tuple[torch.Tensor, torch.Tensor]], sigmoid: bool = False,
                        amp_dtype: torch.dtype | None = None) -> list[float]:
    """The fraction of the valid voxels of ``patches`` (:func:`monitor_patches`) that ``net`` predicts as each
    foreground class (argmax; with ``sigmoid`` each region > 0.5), identity mirroring: ``[fraction]`` for
    classes ``1 .. n-1`` (softmax) or every region (sigmoid)."""
    net.eval()
    counts: torch.Tensor | None = None
    total = 0
    for x, valid in patches:
        p = mirrored_probabilities(net, x, (), sigmoid, amp_dtype)
        if sigmoid:
            hits = (p > 0.5) & valid.unsqueeze(1)
        else:
            label = p.argmax(dim=1)
            hits = torch.stack([(label == c) & valid for c in range(1, p.shape[1])], dim=1)
        n = hits.flatten(2).sum(dim=(0, 2)).double().cpu()
        counts = n if counts is None else counts + n
        total += int(valid.sum())
    assert counts is not None
    return [float(v) / max(1, total) for v in counts]


def fraction_drift(now: Sequence[float], before: Sequence[float]) -> list[float | None]:
    """Relative change ``now / before - 1`` per class; None where the unadapted network predicted none of it
    (nothing to compare with)."""
    return [None if b <= 0 else a / b - 1.0 for a, b in zip(now, before)]


@dataclass
class AdaptReport:
    """What :func:`adapt_network` did. ``losses``: the entropy of every step (before its update); ``balance``:
    the balance term (KL to the source's class distribution) of every step (empty without one);
    ``fractions_before``/``_after``: the stopping rule's predicted foreground fraction per class before adapting
    and of the network kept; ``checks``: every check of the stopping rule (``step``, ``fractions``, ``drift``,
    ``passed``); ``stopped``: None, or why the rule stopped (``step``, ``class``, ``fraction``, ``before``,
    ``drift``, ``limit``, ``restored_step``, ``message``); ``kept_step``: the step whose parameters the network
    holds at the end (0: the source's)."""

    losses: list[float] = field(default_factory=list)
    balance: list[float] = field(default_factory=list)
    fractions_before: list[float] = field(default_factory=list)
    fractions_after: list[float] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    stopped: dict | None = None
    kept_step: int = 0


def adapt_network(net: nn.Module, cases: Sequence[np.ndarray], patch: Sequence[int], settings: TentSettings,
                  device: torch.device, sigmoid: bool = False, amp_dtype: torch.dtype | None = None,
                  on_step: Callable[[int, float, float], None] | None = None,
                  class_names: Sequence[str] | None = None) -> AdaptReport:
    """Adapt ``net`` (on ``device``) in place to the preprocessed target ``cases`` (each ``(C, Z, Y, X)``):
    ``settings.steps`` Adam steps on the entropy of the mean prediction over mirrorings of random patches plus
    ``settings.balance_weight`` times the KL of the batch's class distribution from a frozen source copy's on
    the same patches, with respect to the normalization layers' affine parameters only (gradients by
    :func:`objective_backward`, one mirroring's graph at a time); with ``settings.max_drift`` the stopping rule
    (module docstring) may end the run early and restore the last parameters that passed.
    ``on_step(step, entropy, balance)`` is called after each step (1-based); ``class_names`` (foreground classes
    or regions, in output order) only name classes in messages."""
    settings.check()
    if not cases:
        raise ValueError("no target case to adapt to")
    source = None
    if settings.balance_weight > 0:
        source = copy.deepcopy(net).to(device).eval()
        for p in source.parameters():
            p.requires_grad_(False)
    params = prepare_network(net)
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rng = np.random.default_rng(settings.seed)
    report = AdaptReport()
    limit = settings.max_drift
    watch = limit is not None
    patches = monitor_patches(cases, patch, device) if watch else []
    if watch:
        report.fractions_before = predicted_fractions(net, patches, sigmoid, amp_dtype)
        report.checks.append({"step": 0, "fractions": report.fractions_before, "drift": None, "passed": True})
        if not any(f > 0 for f in report.fractions_before):
            log.warning("the stopping rule has nothing to watch: the unadapted network predicts no foreground on "
                        "the centred patches of the target cases")
    kept = {k: p.detach().clone() for k, p in enumerate(params)}
    for step in range(1, settings.steps + 1):
        x, valid = _batch(cases, patch, settings.patches, rng, device)
        mirrorings = choose_mirrorings(len(patch), settings.mirrorings, rng)
        prior = None
        if source is not None:
            with torch.no_grad():
                prior = class_distribution(mirrored_probabilities(source, x, (), sigmoid, amp_dtype), valid)
        optimizer.zero_grad(set_to_none=True)
        entropy, balance = objective_backward(net, x, valid, mirrorings, sigmoid, amp_dtype, scale=scaler.scale,
                                              prior=prior, balance_weight=settings.balance_weight)
        report.losses.append(entropy)
        if prior is not None:
            report.balance.append(balance)
        scaler.step(optimizer)
        scaler.update()
        if on_step is not None:
            on_step(step, entropy, balance)
        if limit is None or (step % settings.check_every and step != settings.steps):
            continue
        fractions = predicted_fractions(net, patches, sigmoid, amp_dtype)
        drift = fraction_drift(fractions, report.fractions_before)
        watched = {i: d for i, d in enumerate(drift) if d is not None}  # classes the unadapted model predicts
        worst = max(watched, key=lambda i: abs(watched[i]), default=-1)
        passed = worst < 0 or abs(watched[worst]) <= (limit or 0.0)
        report.checks.append({"step": step, "fractions": fractions, "drift": drift, "passed": passed})
        if passed:
            kept = {k: p.detach().clone() for k, p in enumerate(params)}
            report.kept_step = step
            continue
        with torch.no_grad():
            for k, p in enumerate(params):
                p.copy_(kept[k])
        name = (class_names[worst] if class_names is not None and worst < len(class_names)
                else f"class {worst + 1}")
        message = (f"stopped at step {step}/{settings.steps}: the predicted fraction of '{name}' moved "
                   f"{watched[worst]:+.1%} from the unadapted model's ({fractions[worst]:.5f} vs "
                   f"{report.fractions_before[worst]:.5f}; limit {settings.max_drift:.0%}); restored the parameters "
                   f"of step {report.kept_step}" + (" (the source's)" if report.kept_step == 0 else ""))
        report.stopped = {"step": step, "class": name, "fraction": fractions[worst],
                          "before": report.fractions_before[worst], "drift": watched[worst],
                          "limit": settings.max_drift, "restored_step": report.kept_step, "message": message}
        log.warning("%s", message)
        break
    else:
        report.kept_step = settings.steps
    if watch:
        report.fractions_after = (report.checks[-1]["fractions"] if report.stopped is None
                                  else predicted_fractions(net, patches, sigmoid, amp_dtype))
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    return report


class StepLog:
    """``on_step`` for :func:`adapt_network`: a log line every tenth of the run (and the last step), with the
    mean entropy and balance term since the previous line and the time per step."""

    def __init__(self, label: str, steps: int, on_log: Callable[[], None] | None = None):
        self.label, self.steps, self.on_log = label, steps, on_log  # on_log: e.g. a Heartbeat's beat
        self.every = max(1, steps // 10)
        self.start = self.last_t = time.monotonic()
        self.recent: list[float] = []
        self.recent_balance: list[float] = []
        self.step = 0

    def __call__(self, step: int, loss: float, balance: float = 0.0) -> None:
        self.step = step
        self.recent.append(loss)
        self.recent_balance.append(balance)
        if step % self.every and step != self.steps:
            return
        now = time.monotonic()
        log.info("%s: step %d/%d, entropy %.4f, balance %.5f (means of the last %d), %.2f s/step", self.label, step,
                 self.steps, float(np.mean(self.recent)), float(np.mean(self.recent_balance)), len(self.recent),
                 (now - self.last_t) / len(self.recent))
        self.recent, self.recent_balance, self.last_t = [], [], now
        if self.on_log is not None:
            self.on_log()

    def status(self) -> str:
        """For :class:`segpipe.progress.Heartbeat`."""
        return f"{self.label}: step {self.step}/{self.steps}, {time.monotonic() - self.start:.0f} s elapsed"
