"""Semi-supervised training (``--trainer bcp``) against supervised-only training on the same labelled cases.

The data (MSD hippocampus, 260 cases): the 52 validation cases of fold 0 of segpipe's own 5-fold split are the
held-out test set; of the other 208, every 10th (sorted by id, 21 cases = 10%) is labelled and the other 187
are unlabelled. Two nnU-Net folders are written: ``sup`` (the 21 labelled cases) and ``semi`` (the same 21 plus
the 187 in ``imagesUnlabelled/``). Both are onboarded, fingerprinted and planned (the plans are the same: the
fingerprint uses the labelled cases only), preprocessed, trained on every labelled case (fold ``all``) for the
same number of iterations and seed, predicted on the test images and evaluated against their labels.

    .venv/bin/python benchmarks/semi_supervised.py --out /tmp/semi --epochs 16 --seeds 0 1 2 [--device cuda]

Prints the mean foreground Dice per arm and seed and the difference (BCP - supervised). Trains the arms one
after the other (use ``--stage data`` to only write the folders, ``--stage train`` to skip prediction).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HIPPO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus_mri"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def write_data(src: Path, out: Path, every: int, n_test: int = 0) -> dict[str, list[str]]:
    from segpipe.training.splits import make_splits

    ids = sorted(p.name[: -len(".nii.gz")] for p in (src / "imagesTr").iterdir() if p.name.endswith(".nii.gz"))
    fold0 = make_splits(ids)[0]
    test, train = sorted(fold0["val"]), sorted(fold0["train"])
    test = test[:n_test] if n_test else test
    labelled = train[::every]
    unlabelled = [c for c in train if c not in labelled]
    for arm, extra in (("sup", []), ("semi", unlabelled)):
        d = out / arm
        shutil.rmtree(d, ignore_errors=True)
        for sub in ("imagesTr", "labelsTr") + (("imagesUnlabelled",) if extra else ()):
            (d / sub).mkdir(parents=True)
        for c in labelled:
            shutil.copy2(src / "imagesTr" / f"{c}.nii.gz", d / "imagesTr" / f"{c}_0000.nii.gz")
            shutil.copy2(src / "labelsTr" / f"{c}.nii.gz", d / "labelsTr" / f"{c}.nii.gz")
        for c in extra:
            shutil.copy2(src / "imagesTr" / f"{c}.nii.gz", d / "imagesUnlabelled" / f"{c}_0000.nii.gz")
        (d / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": LABELS,
                                                    "numTraining": len(labelled), "file_ending": ".nii.gz"}))
    for sub in ("images", "labels"):
        shutil.rmtree(out / "test" / sub, ignore_errors=True)
        (out / "test" / sub).mkdir(parents=True)
    for c in test:
        shutil.copy2(src / "imagesTr" / f"{c}.nii.gz", out / "test" / "images" / f"{c}_0000.nii.gz")
        shutil.copy2(src / "labelsTr" / f"{c}.nii.gz", out / "test" / "labels" / f"{c}.nii.gz")
    split = {"test": test, "labelled": labelled, "unlabelled": unlabelled}
    (out / "split.json").write_text(json.dumps(split, indent=1))
    return split


def segpipe(*args: str, log: Path) -> float:
    t = time.monotonic()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "segpipe", *args], stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="work folder (data, workspaces, predictions, logs)")
    p.add_argument("--data", type=Path, default=HIPPO, help="MSD hippocampus folder (imagesTr, labelsTr)")
    p.add_argument("--every", type=int, default=10, help="label every N-th training case (10: 10%%)")
    p.add_argument("--epochs", type=int, default=8, help="epochs for both arms")
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--test-cases", type=int, default=0, help="score only the first N test cases (0: all 52)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stage", choices=("data", "train", "all"), default="all")
    a = p.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = write_data(a.data, out, a.every, a.test_cases)
    print(f"{len(split['labelled'])} labelled, {len(split['unlabelled'])} unlabelled, {len(split['test'])} test")
    if a.stage == "data":
        return 0
    results: dict[str, dict[int, float]] = {"sup": {}, "semi": {}}
    for arm, trainer in (("sup", "default"), ("semi", "bcp")):
        ws = out / f"ws_{arm}"
        w = str(a.workers)
        segpipe("onboard", str(out / arm), "-n", "hip", "-w", str(ws), "--workers", w, log=out / f"onboard_{arm}.log")
        segpipe("fingerprint", "-w", str(ws), "-n", "hip", "--workers", w, log=out / f"fingerprint_{arm}.log")
        segpipe("plan", "-w", str(ws), "-n", "hip", log=out / f"plan_{arm}.log")
        segpipe("preprocess", "-w", str(ws), "-n", "hip", "-c", "3d_fullres", "--workers", w,
                log=out / f"preprocess_{arm}.log")
        for seed in a.seeds:
            run_ws = out / f"ws_{arm}_s{seed}"
            if not run_ws.exists():
                shutil.copytree(ws, run_ws, symlinks=True)
            wall = segpipe("train", "-w", str(run_ws), "-n", "hip", "-c", "3d_fullres", "-f", "all", "-tr", trainer,
                           "--seed", str(seed), "--epochs", str(a.epochs), "--iterations-per-epoch",
                           str(a.iterations_per_epoch),
                           "--workers", w, "--device", a.device, "--no-validation",
                           log=out / f"train_{arm}_s{seed}.log")
            print(f"{arm} seed {seed}: trained in {wall:.0f} s")
            if a.stage == "train":
                continue
            pred = out / f"pred_{arm}_s{seed}"
            segpipe("predict", "-w", str(run_ws), "-n", "hip", "-c", "3d_fullres", "-f", "all", "-i",
                    str(out / "test" / "images"), "-o", str(pred), "--workers", w, "--device", a.device,
                    log=out / f"predict_{arm}_s{seed}.log")
            segpipe("evaluate", "--pred", str(pred), "--ref", str(out / "test" / "labels"), "-w", str(run_ws), "-n",
                    "hip", "--no-surface", "--workers", w, "-o", str(out / f"eval_{arm}_s{seed}"),
                    log=out / f"evaluate_{arm}_s{seed}.log")
            summary = json.loads((out / f"eval_{arm}_s{seed}" / "summary.json").read_text())
            results[arm][seed] = float(summary["foreground_mean_dice"])
            print(f"{arm} seed {seed}: mean foreground Dice {results[arm][seed]:.4f}")
    if a.stage == "all":
        for seed in a.seeds:
            print(f"seed {seed}: supervised {results['sup'][seed]:.4f}, bcp {results['semi'][seed]:.4f}, "
                  f"difference {results['semi'][seed] - results['sup'][seed]:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
