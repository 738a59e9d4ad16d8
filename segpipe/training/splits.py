"""Cross-validation splits: k folds of case ids, shuffled with a fixed seed, optionally grouped, and the
workspace's ``splits.json`` (created on first use; its only writer).

Grouping keeps all cases of a group (e.g. several frames of one subject) in the same fold.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from segpipe.errors import fail
from segpipe.io.jsonio import read_json, write_json
from segpipe.training import distributed as dist
from segpipe.workspace import Workspace

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


def load_splits(ws: Workspace, case_ids: list[str], n_folds: int = DEFAULT_FOLDS) -> list[dict]:
    """splits.json, created on first use (seeded, so it is the same on every machine).

    Cases onboarded with a subject (``--subject-csv``/``--subject-pattern``) are grouped: all cases of a subject
    land in the same fold. An existing splits.json that separates a subject's cases is refused.
    """
    wanted = set(case_ids)
    groups = ({c.id: c.subject for c in _dataset_cases(ws) if c.subject is not None and c.id in wanted}
              if ws.dataset_json.is_file() else {})
    if ws.splits_json.is_file():
        splits = read_json(ws.splits_json, kind="splits")["folds"]
        known = {c for f in splits for c in f["val"]}
        if known != wanted:
            raise fail("splits.json does not match the data set's cases (cases were added or removed)",
                       "delete splits.json to make new folds (trained folds then no longer match)",
                       file=ws.splits_json)
        fold_of = {c: k for k, f in enumerate(splits) for c in f["val"]}
        folds_of_subject: dict[str, set[int]] = {}
        for cid, subject in groups.items():
            folds_of_subject.setdefault(subject, set()).add(fold_of[cid])
        split_subjects = sorted(s for s, ks in folds_of_subject.items() if len(ks) > 1)
        if split_subjects:
            raise fail(f"splits.json puts cases of one subject into different folds (subjects {split_subjects[:5]})",
                       "delete splits.json to make folds that keep each subject together (trained folds then no "
                       "longer match)", file=ws.splits_json)
        return splits
    splits = make_splits(case_ids, n_folds, groups=groups or None)
    if dist.world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0:
        write_json(ws.splits_json, {"folds": splits}, kind="splits")
    return splits


def fold_cases(ws: Workspace, fold: str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    if fold == "all":
        return sorted(case_ids), sorted(case_ids)
    splits = load_splits(ws, case_ids)
    try:
        k = int(fold)
        return splits[k]["train"], splits[k]["val"]
    except (ValueError, IndexError):
        raise fail(f"unknown fold '{fold}'", f"use 0..{len(splits) - 1} or all") from None


def _dataset_cases(ws: Workspace):
    from segpipe.dataset.store import load_dataset

    return load_dataset(ws).cases


def fold_names(ws: Workspace) -> list[str]:
    """The folds of the workspace's splits.json ("0", "1", ...), creating splits.json on first use: 5 folds,
    fewer when the data set has fewer cases (or subjects)."""
    return [str(k) for k in range(len(load_splits(ws, [c.id for c in _dataset_cases(ws)])))]
