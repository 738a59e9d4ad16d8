"""`segpipe plan` refuses overrides that cannot work before anything is written."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import hippo_ids, make_msd, tree_state

from segpipe.cli import main
from segpipe.io.jsonio import read_json


@pytest.fixture(scope="module")
def fingerprinted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("overrides")
    src = make_msd(root / "src", hippo_ids(3))
    ws = root / "ws"
    assert main(["onboard", str(src), "--name", "h", "--workspace", str(ws), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    return ws


BAD = [
    (["--patch-size", "0", "32", "32"], "--patch-size"),
    (["--patch-size", "-8", "32", "32"], "--patch-size"),
    (["--patch-size", "32", "32"], "configuration '3d_fullres' needs 3"),
    (["--config", "2d", "--patch-size", "32", "32", "32"], "configuration '2d' needs 2"),
    (["--spacing", "-1", "1", "1"], "--spacing"),
    (["--spacing", "0", "1", "1"], "--spacing"),
    (["--spacing", "nan", "1", "1"], "--spacing"),
    (["--spacing", "inf", "1", "1"], "--spacing"),
    (["--spacing", "1", "1"], "the data set is 3D"),
    (["--memory-gb", "0"], "--memory-gb"),
    (["--memory-gb", "-4"], "--memory-gb"),
    (["--memory-gb", "nan"], "--memory-gb"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-2"], "--batch-size"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_impossible_override_is_refused_and_nothing_written(fingerprinted: Path, args, expected, capsys):
    before = tree_state(fingerprinted)
    capsys.readouterr()
    assert main(["plan", "-w", str(fingerprinted), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "fix:" in err
    assert "Traceback" not in err
    assert tree_state(fingerprinted) == before
    assert not (fingerprinted / "h" / "plans.json").exists()


def test_valid_overrides_still_apply(tmp_path: Path, fingerprinted: Path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(fingerprinted, ws, symlinks=True)
    assert main(["plan", "-w", str(ws), "--batch-size", "3", "--patch-size", "16", "32", "16",
                 "--memory-gb", "4", "--spacing", "1", "1", "1"]) == 0
    cfg = read_json(ws / "h" / "plans.json", kind="plans")["configurations"]["3d_fullres"]
    assert cfg["batch_size"] == 3 and cfg["patch_size"] == [16, 32, 16] and cfg["spacing"] == [1.0, 1.0, 1.0]


def test_run_plan_refuses_bad_values_from_python(fingerprinted: Path):
    from segpipe.errors import SegpipeError
    from segpipe.planning.run import run_plan
    from segpipe.workspace import Workspace

    ws = Workspace(fingerprinted, "h")
    for kwargs in ({"patch_size": [16.5, 32, 16]}, {"batch_size": True}, {"memory_gb": "8"}, {"spacing": []}):
        with pytest.raises(SegpipeError):
            run_plan(ws, **kwargs)
    assert not ws.plans_json.exists()
