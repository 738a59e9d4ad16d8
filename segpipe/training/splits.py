"""Cross-validation splits: k folds of case ids, shuffled with a fixed seed, optionally grouped.

Grouping keeps all cases of a group (e.g. several frames of one subject) in the same fold.
"""
from __future__ import annotations

import logging

import numpy as np

from segpipe.errors import fail

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
SPLIT_SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = DEFAULT_FOLDS, seed: int = SPLIT_SEED,
                groups: dict[str, str] | None = None) -> list[dict[str, list[str]]]:
    """``n_folds`` folds ``{"train": [...], "val": [...]}``; each case is validated exactly once.

    With fewer groups than folds, the number of folds drops to the number of groups (at least 2); a data set of
    a single case trains and validates on that case (with a warning), since nothing else is possible.
    """
    ids = sorted(case_ids)
    if not ids:
        raise fail("no cases to split", "onboard a data set with at least one labelled case")
    group_of = {c: (groups or {}).get(c, c) for c in ids}
    unique = sorted(set(group_of.values()))
    if len(unique) == 1:
        log.warning("only one case (or group): training and validating on the same data; the validation Dice "
                    "says nothing about generalisation")
        return [{"train": ids, "val": ids}]
    if len(unique) < n_folds:
        log.warning("only %d cases/groups: using %d folds instead of %d", len(unique), len(unique), n_folds)
        n_folds = len(unique)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = {unique[g]: k % n_folds for k, g in enumerate(order)}
    folds = []
    for k in range(n_folds):
        val = [c for c in ids if fold_of_group[group_of[c]] == k]
        folds.append({"train": [c for c in ids if fold_of_group[group_of[c]] != k], "val": val})
    return folds
