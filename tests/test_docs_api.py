"""docs/api.md's examples run as written: every ```python block, in order, in one namespace, in a temporary
folder (the page's runnable documentation of segpipe.api and segpipe.Predictor)."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

DOC = REPO / "docs" / "api.md"


def test_every_python_example_of_the_api_page_runs(tmp_path: Path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102 - the documentation under test
    out = capsys.readouterr().out
    assert "3d_fullres" in out and "fold_0" in out
    assert (tmp_path / "out" / "hippocampus_001.nii.gz").is_file()
    assert len(list((tmp_path / "out" / "all").glob("*.nii.gz"))) == 20
    assert namespace["predictor"].classes == {"background": 0, "Anterior": 1, "Posterior": 2}  # the MSD names
