"""Where every artifact of a dataset lives. One class; paths come from arguments. The only environment
variable read is ``SEGPIPE_WORKSPACE`` (the default workspace root when ``--workspace`` is not given; said so in
``--help``).

Layout (see docs/architecture.md for which stage writes which)::

    <root>/<dataset>/dataset.json, raw/ (link or copy of the user's folder), fingerprint.json, plans.json,
        calibration.json, preprocessed/<config>/, splits.json, results/<config>/fold_<k>/[validation/],
        selection.json, predictions/<name>/, report/, records/<stage>.json, .locks/
"""
from __future__ import annotations

import os
from pathlib import Path

from segpipe.errors import fail

DEFAULT_WORKSPACE_ENV = "SEGPIPE_WORKSPACE"
DEFAULT_WORKSPACE_DIR = "segpipe_workspace"


def default_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` when given, else ``$SEGPIPE_WORKSPACE``, else ``./segpipe_workspace``."""
    return Path(root or os.environ.get(DEFAULT_WORKSPACE_ENV) or DEFAULT_WORKSPACE_DIR)


class Workspace:
    """Paths of one dataset's artifacts under a workspace root."""

    def __init__(self, root: str | os.PathLike[str], dataset: str):
        self.root = Path(root).expanduser().absolute()
        self.dataset = dataset
        self.dir = self.root / dataset

    @classmethod
    def locate(cls, root: str | os.PathLike[str] | None, dataset: str | None) -> Workspace:
        """The workspace for ``dataset`` under ``root`` (default: $SEGPIPE_WORKSPACE, else ./segpipe_workspace).

        Without ``dataset``, the single dataset of the workspace is used.
        """
        root = default_root(root)
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

    def require_dataset(self) -> Workspace:
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

    @property
    def calibration_json(self) -> Path:
        """Seconds per iteration measured by ``segpipe plan --budget`` (per machine)."""
        return self.dir / "calibration.json"

    @property
    def selection_json(self) -> Path:
        """``segpipe select``'s choice of configuration(s), folds and post-processing."""
        return self.dir / "selection.json"

    @property
    def report(self) -> Path:
        """The HTML report and its plots."""
        return self.dir / "report"

    def results_root(self, config: str) -> Path:
        """The folds of ``config``: ``results/<config>/``."""
        return self.dir / "results" / config

    def results(self, config: str, fold: int | str) -> Path:
        return self.results_root(config) / f"fold_{fold}"

    def validation(self, config: str, fold: int | str) -> Path:
        """A fold's final validation: exported label maps, probabilities and ``summary.json``."""
        return self.results(config, fold) / "validation"

    def predictions(self, name: str) -> Path:
        return self.dir / "predictions" / name

    def scratch(self, name: str) -> Path:
        """A folder of the workspace's own for inputs segpipe prepares itself (e.g. the demo's)."""
        return self.dir / name
