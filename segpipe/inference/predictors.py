"""Registry of predictors: how a configuration's networks turn one preprocessed case into probabilities
(plug-ins add theirs through ``segpipe.plugins``). Not to be confused with :class:`segpipe.Predictor`, the Python
API that predicts files and arrays.

A predictor is ``fn(networks, data, patch_size, n_outputs, **options) -> torch.Tensor``: ``networks`` a module
or a list of them (a configuration's folds), ``data`` a case ``(c, Z, Y, X)`` float32 (channels first, the
configuration's spacing), ``patch_size`` the plan's patch, ``n_outputs`` the output channels; it returns
probabilities ``(n_outputs, Z, Y, X)`` float32 on the CPU. ``options`` are those of
:func:`segpipe.inference.sliding_window.predict_sliding_window` (``mirror_axes``, ``batch_size``, ``device``,
``amp``, ``amp_dtype``, ``sigmoid``, ...); a predictor ignores the ones it has no use for.

The in-tree entry is ``sliding-window`` (Gaussian-weighted sliding window). ``segpipe predict`` and the final
validation call it directly; choosing another predictor by name in the plan is not wired yet.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from segpipe import plugins
from segpipe.inference.sliding_window import predict_sliding_window

PredictorFn = Callable[..., torch.Tensor]

PREDICTORS: dict[str, PredictorFn] = {}


register_predictor: plugins.Registrar[PredictorFn] = plugins.Registrar("predictor")
"""Decorator: ``@register_predictor(name)`` makes ``fn`` the predictor called ``name``."""


def get_predictor(name: str) -> PredictorFn:
    """The predictor registered as ``name`` (a SegpipeError with a did-you-mean hint otherwise)."""
    fn: PredictorFn = plugins.lookup("predictor", name, "use one of: {names}, or install the plug-in that provides it")
    return fn


register_predictor("sliding-window")(predict_sliding_window)
