"""Errors survive process boundaries: a worker's error reaches the user with its case, file, problem and fix,
exactly as with one worker; the other cases still finish; a worker that dies is named by its case."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
from conftest import hippo_file, hippo_ids, make_msd

from segpipe.cli import main
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.parallel import map_cases


def test_segpipe_error_survives_pickling():
    e = SegpipeError([Problem("bad spacing", "fix it", "/data/a.nii.gz", "a"), Problem("w", "x", severity="warning")])
    back = pickle.loads(pickle.dumps(e))
    assert isinstance(back, SegpipeError)
    assert back.problems == e.problems and str(back) == str(e)


def _work(arg: tuple[str, Path]) -> str:
    case, marks = arg
    if case == "user_error":
        raise fail("the image is broken", "replace it", file=f"/data/{case}.nii.gz")
    if case == "bug":
        raise ZeroDivisionError("division by zero")
    if case == "dies":
        os.kill(os.getpid(), signal.SIGKILL)
    (marks / case).write_text("done")
    return case.upper()


def _run(tmp_path: Path, workers: int, cases: list[str]) -> tuple[SegpipeError | None, set[str]]:
    marks = tmp_path / f"marks{workers}"
    marks.mkdir()
    try:
        out = map_cases(_work, [(c, marks) for c in cases], workers, "stage", cases=cases)
        assert out == [c.upper() for c in cases]
        err = None
    except SegpipeError as e:
        err = e
    return err, {p.name for p in marks.iterdir()}


def _strip(problems: list[Problem]) -> list[tuple]:
    return [(p.problem.split(" at ")[0], p.fix, p.file, p.case) for p in problems]


def test_worker_errors_are_reported_like_inline_errors_and_other_cases_finish(tmp_path: Path):
    cases = ["a", "user_error", "b", "bug", "c", "d"]
    e1, done1 = _run(tmp_path, 1, cases)
    e2, done2 = _run(tmp_path, 2, cases)
    assert done1 == done2 == {"a", "b", "c", "d"}
    assert e1 is not None and e2 is not None
    assert _strip(e1.problems) == _strip(e2.problems)
    text = e2.format()
    assert "case 'user_error', file /data/user_error.nii.gz: the image is broken" in text and "fix: replace it" in text
    assert "case 'bug'" in text and "ZeroDivisionError" in text
    assert "2 of 6 case(s) failed: ['user_error', 'bug']" in text


def test_a_dying_worker_is_named_and_the_other_cases_finish(tmp_path: Path):
    cases = ["a", "b", "dies", "c", "d", "e"]
    err, done = _run(tmp_path, 2, cases)
    assert done == {"a", "b", "c", "d", "e"}
    assert err is not None
    assert [p.case for p in err.problems if p.case] == ["dies"]
    assert "worker process died" in err.format() and "--workers" in err.format()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_preprocess_reports_a_damaged_case_from_a_worker_and_finishes_the_others(tmp_path: Path, workers: str,
                                                                              capsys):
    ids = hippo_ids(4)
    src = make_msd(tmp_path / "src", ids)
    ws = tmp_path / "ws"
    assert main(["onboard", str(src), "--name", "d", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", workers]) == 0
    assert main(["plan", "-w", str(ws)]) == 0
    bad = src / "imagesTr" / f"{ids[2]}.nii.gz"
    bad.write_bytes(bad.read_bytes()[:3000])  # damaged after onboarding
    capsys.readouterr()
    assert main(["preprocess", "-w", str(ws), "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert f"case '{ids[2]}'" in err and str(bad) in err and "truncated" in err and "fix:" in err
    assert "1 of 4 case(s) failed" in err and "Traceback" not in err and "BrokenProcessPool" not in err
    done = sorted(p.name.removesuffix("_data.b2nd") for p in (ws / "d" / "preprocessed" / "3d_fullres").glob("*.b2nd")
                  if p.name.endswith("_data.b2nd"))
    assert done == sorted(set(ids) - {ids[2]})
    shutil.copy(hippo_file(ids[2]), bad)
    assert main(["preprocess", "-w", str(ws), "--workers", workers]) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_predict_reports_a_damaged_input_and_writes_the_other_cases(tiny_one_fold: Path, tmp_path: Path, workers: str,
                                                                   capsys):
    img = tmp_path / "images"
    img.mkdir()
    ids = hippo_ids(10)[6:9]
    for cid in ids:
        shutil.copy(hippo_file(cid), img / f"{cid}_0000.nii.gz")
    bad = img / f"{ids[1]}_0000.nii.gz"
    bad.write_bytes(bad.read_bytes()[:2500])
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(img), "-o", str(out), "--workers", workers,
                 "--config", "3d_fullres", "--folds", "0", "--no-mirror"]) == 2
    err = capsys.readouterr().err
    assert f"case '{ids[1]}'" in err and str(bad) in err and "truncated" in err and "fix:" in err
    assert "1 of 3 case(s) failed" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}.nii.gz" for c in ids if c != ids[1])


def test_workers_are_not_forked_from_the_main_process():
    """A plain fork copies library thread pools in whatever state they are (a held blosc2 lock deadlocked
    `segpipe demo --workers 2` in preprocessing); workers come from a forkserver (or spawn) instead."""
    from segpipe.parallel import worker_context

    assert worker_context().get_start_method() in ("forkserver", "spawn")
