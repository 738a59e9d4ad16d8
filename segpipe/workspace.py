"""Where every artifact of a dataset lives. One class; paths come from arguments, never from environment magic.

Layout (see docs/stages.md)::

    <root>/<dataset>/dataset.json, raw/ (link or copy of the user's folder), fingerprint.json, plans.json,
        preprocessed/<config>/, splits.json, results/<config>/fold_<k>/, predictions/<name>/, records/<stage>.json
"""
from __future__ import annotations

import os
from pathlib import Path

from segpipe.errors import fail

DEFAULT_WORKSPACE_ENV = "SEGPIPE_WORKSPACE"


class Workspace:
    """Paths of one dataset's artifacts under a workspace root."""

    def __init__(self, root: str | os.PathLike, dataset: str):
        self.root = Path(root).expanduser().absolute()
        self.dataset = dataset
        self.dir = self.root / dataset

    @classmethod
    def locate(cls, root: str | os.PathLike | None, dataset: str | None) -> "Workspace":
        """The workspace for ``dataset`` under ``root`` (default: $SEGPIPE_WORKSPACE, else ./segpipe_workspace).

        Without ``dataset``, the single dataset of the workspace is used.
        """
        root = Path(root or os.environ.get(DEFAULT_WORKSPACE_ENV) or "segpipe_workspace")
        if dataset is None:
            found = sorted(p.parent.name for p in root.glob("*/dataset.json")) if root.is_dir() else []
            if len(found) == 1:
                dataset = found[0]
            elif not found:
                raise fail("no onboarded dataset in this workspace", "run `segpipe onboard SOURCE --name NAME "
                           "--workspace DIR` first, or pass the right --workspace", file=root)
            else:
                raise fail(f"the workspace holds several datasets: {found}", "choose one with --name NAME",
                           file=root)
        ws = cls(root, dataset)
        return ws

    def require_dataset(self) -> "Workspace":
        if not self.dataset_json.is_file():
            raise fail(f"dataset '{self.dataset}' is not onboarded here", "run `segpipe onboard SOURCE --name "
                       f"{self.dataset} --workspace {self.root}` first", file=self.dataset_json)
        return self

    @property
    def dataset_json(self) -> Path:
        return self.dir / "dataset.json"

    @property
    def raw(self) -> Path:
        return self.dir / "raw"

    @property
    def fingerprint_json(self) -> Path:
        return self.dir / "fingerprint.json"

    @property
    def plans_json(self) -> Path:
        return self.dir / "plans.json"

    @property
    def splits_json(self) -> Path:
        return self.dir / "splits.json"

    @property
    def records(self) -> Path:
        return self.dir / "records"

    def record(self, stage: str) -> Path:
        return self.records / f"{stage}.json"

    def preprocessed(self, config: str) -> Path:
        return self.dir / "preprocessed" / config

    def results(self, config: str, fold: int | str) -> Path:
        return self.dir / "results" / config / f"fold_{fold}"

    def predictions(self, name: str) -> Path:
        return self.dir / "predictions" / name
