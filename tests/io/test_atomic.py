from pathlib import Path

import numpy as np
import pytest

from segpipe.errors import SegpipeError
from segpipe.io.atomic import atomic_path, atomic_save_npz, atomic_write_text, remove_stale_temporaries
from segpipe.io.jsonio import read_json, write_json


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path):
    import os
    import subprocess
    import sys

    dead = _dead_pid()
    (tmp_path / f".tmp-{dead}-abcd-x.npz").write_bytes(b"partial")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f".tmp-{dead}-abcd-raw").mkdir()  # a half-built folder
    (tmp_path / "sub" / f".tmp-{dead}-abcd-raw" / "a.nii.gz").write_bytes(b"x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".tmp-{live.pid}-beef-y.npz").write_bytes(b"being written")
        (tmp_path / f".tmp-{os.getpid()}-cafe-z.json").write_bytes(b"mine")
        (tmp_path / "keep.npz").write_bytes(b"ok")
        assert remove_stale_temporaries(tmp_path) == 1
        assert (tmp_path / "sub" / f".tmp-{dead}-abcd-raw").is_dir()  # not recursive by default
        assert remove_stale_temporaries(tmp_path, recursive=True) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["keep.npz", "sub", f".tmp-{live.pid}-beef-y.npz", f".tmp-{os.getpid()}-cafe-z.json"])
    finally:
        live.kill()
        live.wait()


def test_a_writer_that_writes_nothing_or_a_truncated_archive_replaces_nothing(tmp_path: Path):
    from segpipe.io.atomic import verify_zip

    target = tmp_path / "a.npz"
    atomic_save_npz(target, a=np.arange(1000))
    good = target.read_bytes()
    with pytest.raises(OSError, match="0 bytes"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"")
    with pytest.raises(OSError, match="incomplete archive"):
        with atomic_path(target, verify=verify_zip) as tmp:
            tmp.write_bytes(good[: len(good) // 2])
    with pytest.raises(OSError, match="no file"):
        with atomic_path(target):
            pass
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_npz_refuses_object_arrays(tmp_path: Path):
    with pytest.raises(TypeError):
        atomic_save_npz(tmp_path / "x.npz", a=np.array([{"a": 1}], dtype=object))
    atomic_save_npz(tmp_path / "y.npz", a=np.arange(3))
    with np.load(tmp_path / "y.npz", allow_pickle=False) as z:
        assert z["a"].tolist() == [0, 1, 2]


def test_json_kind_and_version_are_checked(tmp_path: Path):
    write_json(tmp_path / "f.json", {"x": float("nan"), "y": np.int64(3)}, kind="fingerprint")
    d = read_json(tmp_path / "f.json", kind="fingerprint")
    assert d["x"] is None and d["y"] == 3 and d["schema_version"] == 1
    with pytest.raises(SegpipeError, match="expected a segpipe 'plans' artifact"):
        read_json(tmp_path / "f.json", kind="plans")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SegpipeError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
