"""A really full disk: a small tmpfs mounted for the test (needs root; skipped with the reason otherwise).

Proves the fault happened (the filesystem is full afterwards, the command failed with ENOSPC) and that nothing
was lost: no 0-byte or truncated file, an earlier good file byte-for-byte unchanged, no temporaries left.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import hippo_file, hippo_ids

from segpipe.cli import main
from segpipe.io.images import Geometry, read_image, write_image


@contextlib.contextmanager
def small_filesystem(where: Path, size: str):
    """Mount a tmpfs of ``size`` at ``where`` for the duration; skip the test where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root); the injected disk-full fault in "
                    "test_bad_input_corpus.py covers this case otherwise")
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the injected disk-full fault covers this")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, keep_free: int = 0) -> None:
    """Fill the filesystem of ``folder`` up to ``keep_free`` bytes."""
    with open(folder / f"filler-{uuid.uuid4().hex}", "wb") as fh:
        with contextlib.suppress(OSError):
            while shutil.disk_usage(folder).free > keep_free:
                fh.write(b"\0" * min(1 << 16, max(4096, shutil.disk_usage(folder).free - keep_free)))
                fh.flush()


def test_write_image_on_a_full_disk_raises_and_keeps_the_good_file(tmp_path: Path):
    geo = Geometry((40, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    good = np.zeros((40, 40, 40), np.uint8)
    noisy = np.random.default_rng(0).integers(0, 3, (40, 40, 40)).astype(np.uint8)  # compresses badly
    with small_filesystem(tmp_path / "fs", "128k") as fs:
        target = fs / "case.nii.gz"
        write_image(good, geo, target)
        before = target.read_bytes()
        _fill(fs, keep_free=8192)
        with pytest.raises(OSError) as info:
            write_image(noisy, geo, target)
        assert info.value.errno == errno.ENOSPC
        assert shutil.disk_usage(fs).free < 64 * 1024  # the disk really was full
        assert target.read_bytes() == before
        assert not list(fs.glob(".tmp-*"))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_predict_on_a_full_disk_fails_loudly_and_loses_nothing(tiny_one_fold: Path, tmp_path: Path, workers: str,
                                                               capsys):
    img = tmp_path / "images"
    img.mkdir()
    ids = hippo_ids(10)[6:10]
    for cid in ids:
        shutil.copy(hippo_file(cid), img / f"{cid}_0000.nii.gz")
    with small_filesystem(tmp_path / "fs", "256k") as fs:
        out = fs / "pred"
        argv = ["predict", "-w", str(tiny_one_fold), "--input", str(img), "--output", str(out), "--workers", workers,
                "--config", "3d_fullres", "--folds", "0", "--no-mirror"]
        assert main(argv) == 0
        good = {p.name: p.read_bytes() for p in out.iterdir()}
        assert len(good) == len(ids)
        _fill(fs, keep_free=0)
        assert shutil.disk_usage(fs).free == 0
        capsys.readouterr()
        code = main(argv + ["--save-probabilities"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "no space left" in err and "fix:" in err and "Traceback" not in err
        for name, data in good.items():  # earlier good label maps are untouched
            assert (out / name).read_bytes() == data
        assert all(p.stat().st_size > 0 for p in out.iterdir())
        assert not list(out.glob(".tmp-*"))
        # each written label map reads back whole
        for p in out.glob("*.nii.gz"):
            arr, _ = read_image(p)
            assert arr.ndim == 3
