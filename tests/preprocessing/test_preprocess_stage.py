from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, hippo_ids, make_msd

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.atomic import TMP_PREFIX
from segpipe.io.jsonio import read_json
from segpipe.preprocessing.run import run_preprocess
from segpipe.preprocessing.store import STORAGE_VERSION, list_cases, load_case, open_case
from segpipe.workspace import Workspace

LABELS = ["--labels", "background=0", "anterior=1", "posterior=2"]
N = 6


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A workspace root with 6 hippocampus cases onboarded, fingerprinted and planned (via the CLI)."""
    base = tmp_path_factory.mktemp("pp")
    src = make_msd(base / "Task04", hippo_ids(N))
    root = base / "ws"
    assert main(["onboard", str(src), "--name", "hippo", "--workspace", str(root), *LABELS, "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(root), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(root)]) == 0
    return root


def _copy(planned: Path, dst: Path) -> Workspace:
    shutil.copytree(planned, dst, symlinks=True)
    return Workspace(dst, "hippo")


def _pp(root: Path, *extra: str) -> int:
    return main(["preprocess", "-w", str(root), "--config", "3d_fullres", "--workers", "1", *extra])


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}


def test_preprocess_writes_cases_then_skips(planned: Path, tmp_path: Path, capsys):
    ws = _copy(planned, tmp_path / "ws")
    capsys.readouterr()
    assert main(["preprocess", "-w", str(ws.root), "--config", "3d_fullres", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{N} case(s) written" in out and "3d_fullres" in out
    folder = ws.preprocessed("3d_fullres")
    ids = hippo_ids(N)
    assert list_cases(folder) == ids
    plans = read_json(ws.plans_json, kind="plans")
    for cid in ids:
        assert (folder / f"{cid}_data.b2nd").is_file() and (folder / f"{cid}_seg.b2nd").is_file()
        assert (folder / f"{cid}.json").is_file() and not (folder / f"{cid}.npz").exists()
        data, seg, props = load_case(folder, cid)
        assert data.dtype == np.float32 and seg.dtype == np.int8 and data.shape[1:] == seg.shape[1:]
        assert props["case"] == cid and props["config"] == "3d_fullres"
        assert props["target_spacing"] == plans["configurations"]["3d_fullres"]["spacing"]
        assert props["storage"] == "blosc2" and props["storage_version"] == STORAGE_VERSION
        assert read_json(folder / f"{cid}.json", kind="case_properties")["kind"] == "case_properties"
        bdata, bseg = open_case(folder, cid)
        assert bdata.shape == data.shape and np.array_equal(bdata[:, 1:5, 2:9], data[:, 1:5, 2:9])
        assert np.array_equal(bseg[...], seg)
    before = _mtimes(folder)
    assert _pp(ws.root) == 0
    assert "unchanged, skipped" in capsys.readouterr().out
    assert _mtimes(folder) == before


def test_missing_json_redoes_only_that_case_and_stale_temporaries_go(planned: Path, tmp_path: Path, capsys):
    ws = _copy(planned, tmp_path / "ws")
    assert _pp(ws.root) == 0
    folder = ws.preprocessed("3d_fullres")
    victim = hippo_ids(N)[2]
    (folder / f"{victim}.json").unlink()
    stale = folder / f"{TMP_PREFIX}999999-deadbeef-{victim}_data.b2nd"
    stale.write_bytes(b"half a file")
    assert list_cases(folder) == [c for c in hippo_ids(N) if c != victim]
    before = _mtimes(folder)
    time.sleep(0.01)
    capsys.readouterr()
    assert _pp(ws.root) == 0
    assert "1 case(s) written" in capsys.readouterr().out
    assert not stale.exists()
    after = _mtimes(folder)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {f"{victim}_data.b2nd", f"{victim}_seg.b2nd", f"{victim}.json"}
    assert list_cases(folder) == hippo_ids(N)


def test_changed_plan_or_force_redoes_everything(planned: Path, tmp_path: Path, capsys):
    ws = _copy(planned, tmp_path / "ws")
    assert _pp(ws.root) == 0
    folder = ws.preprocessed("3d_fullres")
    shape0 = load_case(folder, hippo_ids(N)[0])[0].shape
    assert main(["plan", "-w", str(ws.root), "--spacing", "2", "2", "2", "--force"]) == 0
    capsys.readouterr()
    assert _pp(ws.root) == 0
    assert f"{N} case(s) written" in capsys.readouterr().out
    data, _, props = load_case(folder, hippo_ids(N)[0])
    assert props["target_spacing"] == [2.0, 2.0, 2.0] and data.shape != shape0
    assert _pp(ws.root, "--force") == 0
    assert f"{N} case(s) written" in capsys.readouterr().out


def test_unknown_config_suggests_the_closest(planned: Path, tmp_path: Path):
    ws = _copy(planned, tmp_path / "ws")
    with pytest.raises(SegpipeError) as e:
        run_preprocess(ws, "3d_fulres")
    assert "did you mean '3d_fullres'" in str(e.value) and "2d" in str(e.value)


def test_2d_config_of_3d_data(planned: Path, tmp_path: Path):
    ws = _copy(planned, tmp_path / "ws")
    n, skipped = run_preprocess(ws, "2d", workers=1)
    assert (n, skipped) == (N, False)
    for cid in hippo_ids(N):
        _, _, props = load_case(ws.preprocessed("2d"), cid)
        assert props["target_spacing"][0] == props["spacing"][0]
        assert props["shape_after_resampling"][0] == props["shape_after_crop"][0]
    assert run_preprocess(ws, "2d", workers=1) == (0, True)


def _results(folder: Path) -> dict:
    out = {}
    for cid in list_cases(folder):
        data, seg, props = load_case(folder, cid)
        out[cid] = (data, seg, props)
    return out


def test_killed_run_resumes_and_matches_an_uninterrupted_one(planned: Path, tmp_path: Path, capsys):
    killed = _copy(planned, tmp_path / "killed")
    clean = _copy(planned, tmp_path / "clean")
    folder = killed.preprocessed("3d_fullres")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "segpipe", "preprocess", "-w", str(killed.root), "--config",
                             "3d_fullres", "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(folder.glob("hippocampus_*.json")) if folder.is_dir() else True:
            assert proc.poll() is None, "preprocess ended before writing a case"
            assert time.monotonic() < deadline, "no case written within 60 s"
            time.sleep(0.001)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = list_cases(folder)
    assert 1 <= len(done) <= N
    assert not killed.record("preprocess_3d_fullres").exists() or len(done) == N
    before = _mtimes(folder)
    capsys.readouterr()
    assert _pp(killed.root) == 0
    out = capsys.readouterr().out
    assert f"{N - len(done)} case(s) written" in out or (len(done) == N and "0 case(s) written" in out)
    after = _mtimes(folder)
    for cid in done:  # cases complete before the kill were not redone
        for name in (f"{cid}_data.b2nd", f"{cid}_seg.b2nd", f"{cid}.json"):
            assert after[name] == before[name], name
    assert not [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]

    assert _pp(clean.root) == 0
    a, b = _results(folder), _results(clean.preprocessed("3d_fullres"))
    assert sorted(a) == sorted(b) == hippo_ids(N)
    for cid in a:
        assert np.array_equal(a[cid][0], b[cid][0]) and np.array_equal(a[cid][1], b[cid][1])
        assert a[cid][2] == b[cid][2]
    assert _pp(killed.root) == 0 and "unchanged, skipped" in capsys.readouterr().out


def test_cases_made_with_another_plan_are_redone_and_refused_by_train(tiny_ws_template: Path, tmp_path: Path,
                                                                       capsys):
    """Re-planning while a preprocess runs must never leave cases at two spacings: each case records the
    plan it was made with; preprocess redoes the odd ones and train refuses a mixed folder."""
    import re as _re

    from conftest import copy_ws

    from segpipe.preprocessing.store import case_plan_hash

    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    folder = ws / "tiny" / "preprocessed" / "3d_fullres"
    victim = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))[0]
    good = case_plan_hash(folder, victim.stem)
    assert good and good.startswith("sha256:")
    text = victim.read_text()
    victim.write_text(_re.sub(r'"plan_hash":"[^"]+"', '"plan_hash":"sha256:0000"', text, count=1))
    capsys.readouterr()
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "1 preprocessed case(s) were made with another plan" in err and victim.stem in err
    assert main(["preprocess", "-w", str(ws), "--workers", "1"]) == 0
    assert case_plan_hash(folder, victim.stem) == good
    assert victim.read_text() == text
