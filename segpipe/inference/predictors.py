"""Registry of predictors: how a configuration's networks turn one preprocessed case into probabilities
(plug-ins add theirs through ``segpipe.plugins``). Not to be confused with :class:`segpipe.Predictor`, the Python
API that predicts files and arrays.

A predictor is ``fn(networks, data, patch_size, n_outputs, **options) -> torch.Tensor``: ``networks`` a module
or a list of them (a configuration's folds), ``data`` a case ``(c, Z, Y, X)`` float32 (channels first, the
configuration's spacing), ``patch_size`` the plan's patch, ``n_outputs`` the output channels; it returns
probabilities ``(n_outputs, Z, Y, X)`` float32 on the CPU. ``options`` are those of
:func:`segpipe.inference.sliding_window.predict_sliding_window` (``mirror_axes``, ``batch_size``, ``device``,
``amp``, ``amp_dtype``, ``sigmoid``, ...); a predictor ignores the ones it has no use for.

The in-tree entry is ``sliding-window`` (Gaussian-weighted sliding window), the default. ``segpipe predict
--predictor NAME`` and ``Predictor(..., predictor=NAME)`` choose another one (it is recorded in the prediction's
record); the final validation of training always uses ``sliding-window``. ``--uncertainty`` needs a predictor
that fills ``entropy_out`` (``(Z, Y, X)`` float32: the expected entropy over its members, see
:mod:`segpipe.inference.uncertainty`), which it says by naming ``entropy_out`` as a parameter; it is passed only
when uncertainty is asked for.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from segpipe import plugins
from segpipe.errors import fail
from segpipe.inference.sliding_window import predict_sliding_window

PredictorFn = Callable[..., torch.Tensor]

PREDICTORS: dict[str, PredictorFn] = {}


register_predictor: plugins.Registrar[PredictorFn] = plugins.Registrar("predictor")
"""Decorator: ``@register_predictor(name)`` makes ``fn`` the predictor called ``name``."""


DEFAULT_PREDICTOR = "sliding-window"


def get_predictor(name: str) -> PredictorFn:
    """The predictor registered as ``name`` (a SegpipeError with a did-you-mean hint otherwise)."""
    fn: PredictorFn = plugins.lookup("predictor", name, "use one of: {names}, or install the plug-in that provides it")
    return fn


def fills_entropy(fn: PredictorFn) -> bool:
    """Whether predictor ``fn`` names an ``entropy_out`` parameter (it computes what uncertainty needs)."""
    try:
        return "entropy_out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_predictor(name: str, uncertainty: bool = False) -> str:
    """``name`` when a predictor is registered under it (did-you-mean error otherwise) and, with ``uncertainty``,
    it fills ``entropy_out``; returns ``name``."""
    fn = get_predictor(name)
    if uncertainty and not fills_entropy(fn):
        raise fail(f"predictor '{name}' does not compute the members' expected entropy (it has no entropy_out "
                   "parameter), which uncertainty needs",
                   f"predict without uncertainty, or with the predictor '{DEFAULT_PREDICTOR}'")
    return name


def run_predictor(name: str, networks: list[torch.nn.Module], data: np.ndarray | torch.Tensor, patch_size: list[int],
                  n_outputs: int,
                  **options: object) -> torch.Tensor:
    """Call predictor ``name`` and check what it returns: probabilities ``(n_outputs, *data.shape[1:])``, made
    float32 on the CPU. ``entropy_out`` in ``options`` is passed only when it is not None."""
    if options.get("entropy_out") is None:
        options.pop("entropy_out", None)
    probs = get_predictor(name)(networks, data, patch_size, n_outputs, **options)
    want = (int(n_outputs), *(int(s) for s in data.shape[1:]))
    if not isinstance(probs, torch.Tensor) or tuple(probs.shape) != want:
        got = tuple(probs.shape) if hasattr(probs, "shape") else type(probs).__name__
        raise fail(f"predictor '{name}' returned {got}, expected probabilities of shape {want}",
                   f"fix the predictor (or predict with '{DEFAULT_PREDICTOR}')")
    return probs.detach().to("cpu", torch.float32)


register_predictor(DEFAULT_PREDICTOR)(predict_sliding_window)
