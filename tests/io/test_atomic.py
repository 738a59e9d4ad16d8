from pathlib import Path

import numpy as np
import pytest

from segpipe.io.atomic import atomic_path, atomic_save_npz, atomic_write_text, remove_stale_temporaries
from segpipe.io.jsonio import read_json, write_json
from segpipe.errors import SegpipeError


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_stale_temporaries_are_removed(tmp_path: Path):
    (tmp_path / ".tmp-123-abcd-x.npz").write_bytes(b"partial")
    (tmp_path / "keep.npz").write_bytes(b"ok")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npz"]


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
