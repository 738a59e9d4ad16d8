"""The preprocessed-case store (segpipe/preprocessing/store.py): blosc2 arrays written atomically and verified,
read whole (load_case) or by the box (open_case), chunked after the patch size, and versioned: a folder written as
npz by an older segpipe is refused by train with the fix, and redone by preprocess."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import blosc2
import numpy as np
import pytest
from conftest import copy_ws

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.atomic import TMP_PREFIX
from segpipe.preprocessing import store
from segpipe.preprocessing.store import (
    BLOCK_BYTES,
    blosc2_layout,
    check_preprocessed,
    list_cases,
    load_case,
    open_case,
    write_case,
)


def ct_like(shape=(48, 96, 96), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like case after CT normalization: air outside an elliptic body (clipped to the lower percentile, so
    constant), smooth soft tissue with noise inside, a bright 'bone' ring; float32 (1, *shape) and an int8 label
    with background -1 outside the body."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((y / 0.8) ** 2 + (x / 0.7) ** 2)
    hu = np.where(r < 1, 40.0, -1000.0)
    hu[(r > 0.85) & (r < 0.95)] = 700.0
    hu += (r < 1) * (30 * np.sin(3 * z + 2 * y) + rng.normal(0, 20, shape))
    hu = np.clip(hu, -150, 900)
    data = ((hu - 60.0) / 250.0).astype(np.float32)[None]
    seg = np.where(r < 1, 0, -1).astype(np.int8)
    seg[(r < 0.4) & (np.abs(z) < 0.5)] = 1
    seg[(r > 0.85) & (r < 0.95)] = 2
    return data, seg[None]


def _props(seg: np.ndarray) -> dict:
    return {"case": "c", "plan_hash": "sha256:test",
            "class_locations": {str(v): np.argwhere(seg[0] == v)[:50].tolist() for v in (1, 2)}}


def test_round_trip_is_exact_and_the_json_records_the_storage(tmp_path: Path):
    data, seg = ct_like()
    data[0, 0, 0, :4] = [np.inf, -np.inf, -0.0, np.finfo(np.float32).tiny]
    write_case(tmp_path, "c", data, seg, _props(seg), [32, 64, 64])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c_data.b2nd", "c_seg.b2nd"]
    d, s, props = load_case(tmp_path, "c")
    assert d.dtype == np.float32 and s.dtype == np.int8
    assert np.array_equal(d, data) and np.array_equal(s, seg)
    assert np.signbit(d[0, 0, 0, 2])  # bit-exact, not merely equal
    assert props["storage"] == "blosc2" and props["storage_version"] == store.STORAGE_VERSION
    assert store.case_storage(tmp_path, "c") == ("blosc2", store.STORAGE_VERSION)
    assert list_cases(tmp_path) == ["c"]


def test_a_case_without_label_has_no_seg_file(tmp_path: Path):
    data, seg = ct_like((8, 16, 16))
    write_case(tmp_path, "c", data, seg, _props(seg), [8, 16, 16])
    write_case(tmp_path, "c", data, None, {"plan_hash": "sha256:test", "class_locations": {}}, [8, 16, 16])
    d, s, _ = load_case(tmp_path, "c")
    assert s is None and np.array_equal(d, data) and not (tmp_path / "c_seg.b2nd").exists()


def test_compressed_smaller_than_the_raw_array(tmp_path: Path):
    data, seg = ct_like()
    write_case(tmp_path, "c", data, seg, _props(seg), [32, 64, 64])
    data_size = os.path.getsize(tmp_path / "c_data.b2nd")
    seg_size = os.path.getsize(tmp_path / "c_seg.b2nd")
    assert data_size < data.nbytes / 2, (data_size, data.nbytes)
    assert seg_size < seg.nbytes / 10, (seg_size, seg.nbytes)


@pytest.mark.parametrize("box", [
    ([0, 0, 0], [16, 32, 32]),        # a corner
    ([5, 17, 3], [20, 40, 50]),       # inside, across chunk borders
    ([-4, -10, 80], [16, 32, 32]),    # out past the lower z, y and upper x borders
    ([40, 90, 90], [16, 32, 32]),     # out past the upper borders
    ([-3, -5, -7], [60, 110, 120]),   # larger than the image on every axis
    ([10, 20, 30], [1, 40, 40]),      # one slice (a 2D patch)
])
def test_a_patch_read_equals_the_same_box_of_the_full_array(tmp_path: Path, box):
    from segpipe.training.sampling import crop_padded

    data, seg = ct_like()
    write_case(tmp_path, "c", data, seg, _props(seg), [16, 32, 32])
    bdata, bseg = open_case(tmp_path, "c")
    lower, size = box
    assert np.array_equal(crop_padded(bdata, lower, size, 0.0), crop_padded(data, lower, size, 0.0))
    assert np.array_equal(crop_padded(bseg, lower, size, -1), crop_padded(seg, lower, size, -1))
    inside = tuple(slice(max(lo, 0), min(lo + n, m)) for lo, n, m in zip(lower, size, data.shape[1:]))
    assert np.array_equal(bdata[(slice(None), *inside)], data[(slice(None), *inside)])


def test_layout_follows_the_patch_and_fits_blocks_in_l1():
    chunks, blocks = blosc2_layout((1, 200, 512, 512), [80, 160, 160], 4)
    assert blocks == (1, 8, 32, 32) and chunks == (1, 80, 160, 160)
    assert math.prod(blocks) * 4 <= BLOCK_BYTES
    # more channels: smaller blocks, all channels in each
    chunks, blocks = blosc2_layout((4, 200, 512, 512), [80, 160, 160], 4)
    assert blocks[0] == chunks[0] == 4 and math.prod(blocks) * 4 <= BLOCK_BYTES
    assert all(c >= p and c % b == 0 for c, p, b in zip(chunks[1:], [80, 160, 160], blocks[1:]))
    # labels (1 byte): larger blocks
    _, sblocks = blosc2_layout((1, 200, 512, 512), [80, 160, 160], 1)
    assert math.prod(sblocks) == BLOCK_BYTES
    # 2D configuration: patches one slice thick, so are chunks and blocks
    chunks, blocks = blosc2_layout((1, 30, 512, 512), [512, 512], 4)
    assert chunks == (1, 1, 512, 512) and blocks[1] == 1 and math.prod(blocks) * 4 <= BLOCK_BYTES
    # a 2D image (z = 1), and an image smaller than the patch: clamped to the image
    assert blosc2_layout((3, 1, 100, 60), [128, 128], 4)[0] == (3, 1, 100, 60)
    chunks, blocks = blosc2_layout((1, 36, 50, 35), [40, 56, 40], 4)
    assert chunks == (1, 36, 50, 35) and all(b <= n for b, n in zip(blocks, (1, 36, 50, 35)))


def test_a_case_is_written_atomically(tmp_path: Path, monkeypatch):
    """A write that fails its check leaves neither the file nor a temporary, and no json (the case is not
    complete); an earlier version of the case is not complete while it is being rewritten."""
    data, seg = ct_like((8, 16, 16))
    write_case(tmp_path, "c", data, seg, _props(seg), [8, 16, 16])
    real = blosc2.asarray

    def truncating(arr, **kw):
        out = real(arr, **kw)
        del out
        path = Path(kw["urlpath"])
        path.write_bytes(path.read_bytes()[:100])  # a writer that failed silently half-way

    monkeypatch.setattr(blosc2, "asarray", truncating)
    with pytest.raises(OSError, match="failed its check"):
        write_case(tmp_path, "c", data + 1, seg, _props(seg), [8, 16, 16])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert not (tmp_path / "c.json").exists() and list_cases(tmp_path) == []
    monkeypatch.setattr(blosc2, "asarray", real)
    write_case(tmp_path, "c", data + 1, seg, _props(seg), [8, 16, 16])
    assert np.array_equal(load_case(tmp_path, "c")[0], data + 1)


def test_arrays_without_json_are_not_a_case(tmp_path: Path):
    data, seg = ct_like((8, 16, 16))
    write_case(tmp_path, "c", data, seg, _props(seg), [8, 16, 16])
    (tmp_path / "c.json").unlink()
    (tmp_path / f"{TMP_PREFIX}999999-beef-c_seg.b2nd").write_bytes(b"partial")
    assert list_cases(tmp_path) == []
    with pytest.raises(SegpipeError, match="missing, incomplete"):
        load_case(tmp_path, "c")


def _to_npz_format(folder: Path, ws: Path, stage: str) -> list[str]:
    """Make a preprocessed folder look as segpipe wrote it before the blosc2 store: <case>.npz (data, seg), a json
    without storage keys, and a state file and record whose settings name no storage format."""
    ids = list_cases(folder)
    for cid in ids:
        data, seg, _ = load_case(folder, cid)
        np.savez(folder / f"{cid}.npz", data=data, seg=seg)
        for p in (folder / f"{cid}_data.b2nd", folder / f"{cid}_seg.b2nd"):
            p.unlink()
        doc = json.loads((folder / f"{cid}.json").read_text())
        del doc["storage"], doc["storage_version"]
        (folder / f"{cid}.json").write_text(json.dumps(doc, separators=(",", ":")))
    for path in (folder / ".preprocess_state.json", ws / "records" / f"{stage}.json"):
        doc = json.loads(path.read_text())
        for k in ("storage", "storage_version"):
            doc["settings"].pop(k)
        path.write_text(json.dumps(doc))
    return ids


def test_an_npz_folder_is_refused_by_train_and_redone_by_preprocess(tiny_ws_template: Path, tmp_path: Path,
                                                                    capsys):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    folder = ws / "tiny" / "preprocessed" / "3d_fullres"
    ids = _to_npz_format(folder, ws / "tiny", "preprocess_3d_fullres")
    capsys.readouterr()
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "older segpipe" in err and "npz" in err
    assert "segpipe preprocess --config 3d_fullres" in err and "--force" in err
    assert list_cases(folder) == []
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 0
    assert f"{len(ids)} case(s) written" in capsys.readouterr().out
    assert list_cases(folder) == ids and not list(folder.glob("*.npz"))
    from segpipe.planning.plans import read_plans

    check_preprocessed(folder, ids, read_plans(ws / "tiny" / "plans.json").configuration("3d_fullres"),
                       "3d_fullres")


def test_a_json_of_another_storage_version_is_refused(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    folder = ws / "tiny" / "preprocessed" / "3d_fullres"
    victim = list_cases(folder)[0]
    path = folder / f"{victim}.json"
    path.write_text(path.read_text().replace(f'"storage_version":{store.STORAGE_VERSION}', '"storage_version":99'))
    from segpipe.planning.plans import read_plans

    cfg = read_plans(ws / "tiny" / "plans.json").configuration("3d_fullres")
    with pytest.raises(SegpipeError, match="blosc2 v99") as e:
        check_preprocessed(folder, [victim], cfg, "3d_fullres")
    assert "segpipe preprocess --config 3d_fullres" in str(e.value)
