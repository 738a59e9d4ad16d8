"""Plan transfer: another data set's plans used unchanged for this one (``segpipe plan --like
WORKSPACE/DATASET``), as nnU-Net's ``nnUNetv2_move_plans_between_datasets``, e.g. to fine-tune a model trained on
the other data set (same spacing, patch, network and normalization, so its checkpoints fit).

Only what names the data set changes: ``dataset``, ``labels`` (this data set's; the network's output layer is
sized from them at training time), ``planner`` and a note. Configurations, spacing (mm, array axis order),
patch (voxels) and normalization stay as planned for the source; the source's plans.json and its content hash
are recorded in ``transferred_from``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segpipe.dataset.model import DatasetSpec
from segpipe.errors import fail
from segpipe.planning.plans import Plans, read_plans


def source_plans_path(like: str | Path) -> Path:
    """The plans.json that ``--like`` names: a plans.json file, or a data set folder holding one
    (``WORKSPACE/DATASET``)."""
    p = Path(like).expanduser()
    path = p / "plans.json" if p.is_dir() else p
    if not path.is_file():
        raise fail("no plans.json to transfer from", "give --like WORKSPACE/DATASET (a planned data set's folder) "
                   "or the path of its plans.json; plan that data set first with `segpipe plan`", file=path)
    return path


def transfer_plans(source: Plans, spec: DatasetSpec, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """plans.json content for ``spec`` with ``source``'s configurations. Refuses a source whose input channels
    or dimensionality differ from this data set's (its networks would not fit the images)."""
    where = source.file
    if source.n_channels != spec.n_channels:
        raise fail(f"the plans of '{source.dataset}' are for {source.n_channels} input channel(s); data set "
                   f"'{spec.name}' has {spec.n_channels} ({list(spec.channels.values())})",
                   "transfer plans only between data sets with the same channels in the same order", file=where)
    ndim = fingerprint.get("ndim")
    if ndim is not None and len(source.full_resolution_spacing) != int(ndim):
        raise fail(f"the plans of '{source.dataset}' are {len(source.full_resolution_spacing)}D; data set "
                   f"'{spec.name}' is {ndim}D", "transfer plans only between data sets of the same dimensionality",
                   file=where)
    raw = source.to_json()
    digest = hashlib.sha256(Path(where).read_bytes()).hexdigest() if where is not None else None
    raw.update({
        "dataset": spec.name,
        "labels": dict(spec.labels),
        "planner": f"transferred from '{source.dataset}' ({source.planner})",
        "notes": [*source.notes, f"configurations of '{source.dataset}' used unchanged (segpipe plan --like "
                  f"{where}); spacing, patch, network and normalization were planned for that data set"],
        "transferred_from": {"dataset": source.dataset, "plans": str(where), "sha256": digest},
    })
    return raw


def load_source(like: str | Path) -> Plans:
    return read_plans(source_plans_path(like))
