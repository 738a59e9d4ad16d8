"""Reading the workspace's dataset.json (written by ``segpipe onboard`` only: :mod:`segpipe.dataset.onboard`)."""
from __future__ import annotations

from segpipe.dataset.model import DatasetSpec
from segpipe.io.jsonio import read_json
from segpipe.workspace import Workspace


def load_dataset(ws: Workspace) -> DatasetSpec:
    """Read and check the workspace's dataset.json."""
    ws.require_dataset()
    return DatasetSpec.from_dict(read_json(ws.dataset_json, kind="dataset"), file=ws.dataset_json)
