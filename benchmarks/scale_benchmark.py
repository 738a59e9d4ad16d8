#!/usr/bin/env python3
"""Scale benchmark: segpipe vs nnU-Net v2 (2.8.1) on the head-and-neck CT set for N = 5, 10, 20 cases, one run.

Run with segpipe's venv python (``make bench-scale``; ``make bench-scale BENCH_ARGS=--quick`` for a smoke run of a
few minutes). Images: ../shared/data/headneck_oar_labels/make_images.py synthesises CT-like images from the real
label maps (512x512 x 119-184 slices for the first 20 cases); they are made once and cached. For every N the first
N cases go into one nnU-Net raw folder (imagesTr/<case>_0000.nii.gz, labelsTr/, dataset.json), which nnU-Net uses
and which segpipe onboards as it is (``segpipe onboard --format nnunet``). Measured per N and tool, each as a
separate process tree (wall time, peak RSS summed over the tree, polled every 0.1 s): fingerprint + plan,
preprocess 3d_fullres, disk use of the preprocessed data, training data loading alone (batches/s with 1 and 2
workers, no network), and at the largest N one training iteration (the default 3d_fullres plan, batch as planned,
CPU) and the prediction of the largest case (centre crop by default, see --predict-crop; no mirroring for both).
nnU-Net runs only in its own venv (benchmarks/.nnunet_venv, created as run_benchmark.py creates it). See
docs/benchmarks.md, "Scale benchmark".
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from run_benchmark import T_START, Runner, ensure_nnunet_venv, link, machine_info, rmtree, say

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data" / "headneck_oar_labels"
SP_NAME = "headneck"
CONFIG = "3d_fullres"
GB = 1024 ** 3
MB = 1024 ** 2
DOCS_BEGIN = "<!-- scale-benchmark:results:begin -->"
DOCS_END = "<!-- scale-benchmark:results:end -->"

FULL = {"ns": [5, 10, 20], "downsample": 1, "memory_gb": None, "load_batches": 24, "predict_crop": 1.9,
        "results_name": "scale", "docs": str(REPO / "docs" / "benchmarks.md")}
QUICK = {"ns": [2], "downsample": 4, "memory_gb": 1.0, "load_batches": 24, "predict_crop": 1.4,
         "results_name": "scale_quick", "docs": ""}


# ---------------------------------------------------------------------------------------------- data
def read_cases(data: Path) -> list[dict]:
    """cases.csv in file order (make_images.py takes the first N rows), with the physical volume of each scan."""
    rows = []
    with open(data / "cases.csv") as f:
        for r in csv.DictReader(f):
            size = [int(x) for x in r["size_xyz"].split("x")]
            sp = [float(x) for x in r["spacing_xyz_mm"].split("x")]
            rows.append({"case": r["case_id"], "size_xyz": size, "spacing_xyz_mm": sp,
                         "volume_ml": math.prod(s * p for s, p in zip(size, sp)) / 1000.0})
    return rows


def ensure_images(cache: Path, data: Path, n: int, downsample: int, python: str) -> tuple[Path, float]:
    """The first ``n`` cases made by make_images.py into ``cache/headneck_ds<f>`` (made again only when fewer
    cases, another factor or another make_images.py are cached). Returns the folder and the seconds spent."""
    folder = cache / f"headneck_ds{downsample}"
    script = data / "make_images.py"
    want = {"downsample": downsample, "rater": "oncologist", "seed": 0,
            "make_images_sha256": hashlib.sha256(script.read_bytes()).hexdigest()}
    stamp = folder / "generated.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if have.get("cases", 0) >= n and all(have.get(k) == v for k, v in want.items()):
            say(f"images: {have['cases']} cached cases in {folder}")
            return folder, 0.0
    say(f"images: synthesising {n} cases (downsample {downsample}) with {script} into {folder} "
        f"(about {20 if downsample == 1 else 2} s per case; cached for later runs)")
    rmtree(folder)
    t = time.monotonic()
    subprocess.run([python, str(script), str(folder), "--cases", str(n), "--downsample", str(downsample)],
                   check=True, stdout=subprocess.DEVNULL)
    stamp.write_text(json.dumps({**want, "cases": n}, indent=1))
    return folder, time.monotonic() - t


def make_raw(images: Path, dst: Path, cases: list[str]) -> None:
    """An nnU-Net raw folder of ``cases`` (symlinks into the image cache) with its dataset.json."""
    for c in cases:
        link(images / "imagesTr" / f"{c}_0000.nii.gz", dst / "imagesTr" / f"{c}_0000.nii.gz")
        link(images / "labelsTr" / f"{c}.nii.gz", dst / "labelsTr" / f"{c}.nii.gz")
    ds = json.loads((images / "dataset.json").read_text())
    ds["numTraining"] = len(cases)
    (dst / "dataset.json").write_text(json.dumps(ds, indent=1))


def dir_bytes(p: Path) -> int | None:
    """Sum of the sizes of the files under ``p`` (whatever their format), symlinks not followed."""
    if not p.exists():
        return None
    total = 0
    for root, _, files in os.walk(p):
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def n_windows(shape, patch, step: float = 0.5) -> int:
    """Sliding windows over ``shape`` (segpipe's window_starts = nnU-Net's compute_steps_for_sliding_window)."""
    return math.prod(1 if s <= p else math.ceil((s - p) / (p * step)) + 1 for s, p in zip(shape, patch))


def crop_case(src: Path, dst: Path, patch_zyx, spacing_zyx, factor: float) -> dict:
    """Write the centre crop of ``src`` spanning ``factor`` x the plan's patch (in mm) per axis to ``dst``
    (geometry kept: origin moves with the crop). ``factor <= 0``: the whole case (a link)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    size, sp = list(img.GetSize()), list(img.GetSpacing())  # x, y, z
    if factor <= 0:
        link(src, dst)
        n = size
    else:
        want_mm = [factor * p * s for p, s in zip(reversed(list(patch_zyx)), reversed(list(spacing_zyx)))]
        n = [min(size[i], max(1, int(want_mm[i] / sp[i]))) for i in range(3)]
        lo = [(size[i] - n[i]) // 2 for i in range(3)]
        crop = img[lo[0]:lo[0] + n[0], lo[1]:lo[1] + n[1], lo[2]:lo[2] + n[2]]
        dst.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(crop, str(dst), True)
    at_plan = [round(n[2 - i] * sp[2 - i] / spacing_zyx[i]) for i in range(3)]  # z, y, x voxels at plan spacing
    return {"source_size_xyz": size, "input_size_xyz": n, "spacing_xyz_mm": sp, "shape_at_plan_spacing_zyx": at_plan,
            "n_windows_step_0.5": n_windows(at_plan, patch_zyx), "crop_factor": factor}


def rounded(v):
    """Plan values for the report: spacings to 3 decimals."""
    return [round(x, 3) if isinstance(x, float) else x for x in v] if isinstance(v, list) else v


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (growth per case)."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


# ---------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run of a few minutes: {QUICK} (explicit options still win)")
    ap.add_argument("--ns", type=int, nargs="+", help=f"numbers of cases (default {FULL['ns']}; at most 35)")
    ap.add_argument("--downsample", type=int, help="in-plane factor for make_images.py (default 1: 512x512)")
    ap.add_argument("--memory-gb", type=float,
                    help="memory target for both planners (segpipe plan --memory-gb, nnUNetv2_plan_experiment "
                         "-gpu_memory_target); default: each planner's own (8 GB); --quick uses 1 (small patch)")
    ap.add_argument("--workers", type=int, default=2, help="processes for fingerprint and preprocessing (both)")
    ap.add_argument("--loader-workers", type=int, nargs="+", default=[1, 2],
                    help="augmentation worker processes for the loading rates")
    ap.add_argument("--load-batches", type=int, help="batches timed per loading rate (default 24), after a warm-up "
                                                     "batch per worker and --load-settle untimed batches")
    ap.add_argument("--load-settle", type=int, default=16,
                    help="untimed batches before the clock starts, more than the loaders' queues hold "
                         "(see benchmarks/loading_timer.py)")
    ap.add_argument("--model-at", type=int, nargs="*",
                    help="Ns at which a training iteration is timed and the largest case predicted with the "
                         "resulting models (default: the largest N; these cost minutes each at full size)")
    ap.add_argument("--predict-crop", type=float,
                    help="predict the centre crop of the largest case spanning this many patches per axis "
                         "(default 1.9: 3x3x3 windows; 0: the whole case, hours at full size on 2 CPU cores)")
    ap.add_argument("--mirror", action="store_true", help="predict with mirroring for both (default: without)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["load", "train", "predict"],
                    help="phases to leave out (for development)")
    ap.add_argument("--data", type=Path, default=DATA, help="headneck_oar_labels folder (cases.csv, make_images.py)")
    ap.add_argument("--work", type=Path, default=HERE / "work_scale",
                    help="scratch folder: images/ (cached), run/ (wiped at start)")
    ap.add_argument("--nnunet-venv", type=Path, default=HERE / ".nnunet_venv")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="folder for <name>.json / <name>.md")
    ap.add_argument("--results-name", help="file name stem (default scale, --quick: scale_quick)")
    ap.add_argument("--docs", help="also put the tables between the scale-benchmark markers of this markdown file "
                                   "(default docs/benchmarks.md; --quick: '' = no)")
    a = ap.parse_args()
    base = QUICK if a.quick else FULL
    for k, v in base.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    a.ns = sorted(set(a.ns))
    if a.model_at is None:
        a.model_at = [a.ns[-1]]
    if not set(a.model_at) <= set(a.ns):
        ap.error(f"--model-at {a.model_at}: each must be one of --ns {a.ns}")
    return a


def main() -> None:
    a = parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    bin_dir = Path(sys.executable).parent
    segpipe = [str(bin_dir / "segpipe")] if (bin_dir / "segpipe").exists() else [sys.executable, "-m", "segpipe"]
    nnv = a.nnunet_venv.resolve()
    nn_bin = nnv / "bin"
    nn_py = str(nn_bin / "python")
    all_cases = read_cases(a.data)
    if a.ns[-1] > len(all_cases):
        raise SystemExit(f"--ns: at most {len(all_cases)} cases")

    say("setup: nnU-Net venv, images")
    ensure_nnunet_venv(nnv, "python3")
    work = a.work.resolve()
    images, gen_s = ensure_images(work / "images", a.data, a.ns[-1], a.downsample, sys.executable)
    run = work / "run"
    rmtree(run)
    (run / "logs").mkdir(parents=True)
    nn_raw, nn_pre, nn_res = run / "nnunet" / "raw", run / "nnunet" / "preprocessed", run / "nnunet" / "results"
    for p in (nn_raw, nn_pre, nn_res):
        p.mkdir(parents=True)
    R = Runner(run / "logs", {"nnUNet_raw": str(nn_raw), "nnUNet_preprocessed": str(nn_pre),
                              "nnUNet_results": str(nn_res)})
    info = machine_info(Path(nn_py))
    say(f"machine: {info['cores']} cores, {info['ram_gb']} GB, {info['cpu_model']}, load {info['loadavg_start']}")
    res: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                 "machine": info, "started_utc": started.isoformat(timespec="seconds"),
                 "image_generation_s": gen_s, "per_n": {}, "complete": False}
    a.results.mkdir(parents=True, exist_ok=True)
    out_json, out_md = a.results / f"{a.results_name}.json", a.results / f"{a.results_name}.md"

    def save(final: bool = False) -> str:
        res["commands"] = R.commands
        res["total_wall_s"] = time.monotonic() - T_START
        res["machine"]["loadavg_end"] = os.getloadavg()
        res["complete"] = final
        md, table = report(res)
        out_json.write_text(json.dumps(res, indent=2, default=str))
        out_md.write_text(md)
        return table

    def measure(cmd: list, phase: str, nnunet: bool = False, extra_env: dict | None = None) -> dict:
        """One measured process tree; a failure is recorded (and the run goes on) instead of raised."""
        for k, v in (extra_env or {}).items():
            R.nn_env[k] = str(v)
        try:
            return R.run([str(c) for c in cmd], phase, nnunet)
        except RuntimeError as e:
            say(f"  FAILED ({phase}): {str(e).splitlines()[0]}  (log in {run / 'logs'})")
            return {"error": str(e)[-3000:]}
        finally:
            for k in extra_env or {}:
                R.nn_env.pop(k, None)

    def combine(parts: list[dict]) -> dict:
        if any("error" in p for p in parts):
            return {"error": " | ".join(p["error"] for p in parts if "error" in p), "parts": parts}
        return {"wall_s": sum(p["wall_s"] for p in parts), "peak_rss_bytes": max(p["peak_rss_bytes"] for p in parts),
                "parts_s": [p["wall_s"] for p in parts]}

    for n in a.ns:
        cases = [c["case"] for c in all_cases[:n]]
        largest = max(all_cases[:n], key=lambda c: c["volume_ml"])["case"]
        ds_id = 500 + n
        ds_name = f"Dataset{ds_id:03d}_HeadNeck{n}"
        raw = nn_raw / ds_name
        make_raw(images, raw, cases)
        ws = run / "segpipe" / f"n{n}"
        spd = ws / SP_NAME
        nn_ds_pre = nn_pre / ds_name
        entry: dict = {"cases": cases, "largest_case": largest, "nnunet_dataset": ds_name, "segpipe": {},
                       "nnunet": {}}
        res["per_n"][str(n)] = entry
        S, N = entry["segpipe"], entry["nnunet"]
        mem_sp = ["--memory-gb", a.memory_gb] if a.memory_gb else []
        mem_nn = ["-gpu_memory_target", a.memory_gb] if a.memory_gb else []

        def sp(*args):
            return segpipe + [str(x) for x in args]

        def nn(exe, *args):
            return [str(nn_bin / exe)] + [str(x) for x in args]

        # ---- fingerprint + plan
        say(f"N={n}: fingerprint + plan")
        S["fp"] = combine([
            measure(sp("onboard", raw, "--name", SP_NAME, "--workspace", ws, "--format", "nnunet",
                       "--allow-external-links", "--force", "--workers", a.workers), f"n{n}_fp_segpipe"),
            measure(sp("fingerprint", "--workspace", ws, "--name", SP_NAME, "--force", "--workers", a.workers),
                    f"n{n}_fp_segpipe"),
            measure(sp("plan", "--workspace", ws, "--name", SP_NAME, "--force", *mem_sp), f"n{n}_fp_segpipe")])
        N["fp"] = combine([
            measure(nn("nnUNetv2_extract_fingerprint", "-d", ds_id, "-np", a.workers, "--clean"),
                    f"n{n}_fp_nnunet", True),
            measure(nn("nnUNetv2_plan_experiment", "-d", ds_id, *mem_nn), f"n{n}_fp_nnunet", True)])
        say(f"  segpipe {fmt_m(S['fp'])}; nnU-Net {fmt_m(N['fp'])}")
        sp_cfg = nn_cfg = None
        try:
            sp_cfg = json.loads((spd / "plans.json").read_text())["configurations"][CONFIG]
            nn_cfg = json.loads((nn_ds_pre / "nnUNetPlans.json").read_text())["configurations"][CONFIG]
        except (OSError, KeyError, ValueError) as e:
            say(f"  no plan to read: {e}")
        entry["plans"] = {tool: {k: (rounded(c.get(k)) if c else None) for k in ("patch_size", "batch_size", "spacing")}
                          for tool, c in (("segpipe", sp_cfg), ("nnunet", nn_cfg))}
        say(f"  plans {CONFIG}: segpipe {entry['plans']['segpipe']}; nnU-Net {entry['plans']['nnunet']}")
        save()

        # ---- preprocess + disk
        say(f"N={n}: preprocess {CONFIG}")
        S["pp"] = measure(sp("preprocess", "--workspace", ws, "--name", SP_NAME, "--config", CONFIG,
                             "--workers", a.workers, "--force"), f"n{n}_pp_segpipe")
        N["pp"] = measure(nn("nnUNetv2_preprocess", "-d", ds_id, "-c", CONFIG, "-np", a.workers),
                          f"n{n}_pp_nnunet", True)
        data_id = (sp_cfg or {}).get("data_identifier", CONFIG)
        S["disk"] = {"config_bytes": dir_bytes(spd / "preprocessed" / data_id),
                     "all_bytes": dir_bytes(spd / "preprocessed"),
                     "folders": [str(spd / "preprocessed")]}
        nn_id = (nn_cfg or {}).get("data_identifier", f"nnUNetPlans_{CONFIG}")
        cfg_b, gt_b = dir_bytes(nn_ds_pre / nn_id), dir_bytes(nn_ds_pre / "gt_segmentations")
        N["disk"] = {"config_bytes": cfg_b, "gt_segmentations_bytes": gt_b,
                     "all_bytes": (cfg_b or 0) + (gt_b or 0) if cfg_b is not None else None,
                     "folders": [str(nn_ds_pre / nn_id), str(nn_ds_pre / "gt_segmentations")]}
        say(f"  segpipe {fmt_m(S['pp'])}, {mb(S['disk']['config_bytes'])}; nnU-Net {fmt_m(N['pp'])}, "
            f"{mb(N['disk']['config_bytes'])} (+ gt_segmentations {mb(gt_b)})")
        save()

        # ---- training data loading alone
        shared = False
        if "load" not in a.skip:
            for w in a.loader_workers:
                say(f"N={n}: data loading, {w} worker(s), {a.load_batches} batches timed after "
                    f"{max(1, w)} + {a.load_settle} untimed")
                out = run / "logs" / f"load_segpipe_n{n}_w{w}.json"
                m = measure([sys.executable, HERE / "loading_segpipe.py", "--workspace", ws, "--name", SP_NAME,
                             "--config", CONFIG, "--workers", w, "--batches", a.load_batches,
                             "--settle", a.load_settle, "--out", out], f"n{n}_load_segpipe")
                if out.is_file():
                    m.update(json.loads(out.read_text()))
                S[f"load_{w}"] = m
                if not shared:  # the loader made segpipe's splits.json: nnU-Net gets the same folds
                    shared = share_splits(spd, nn_ds_pre)
                out = run / "logs" / f"load_nnunet_n{n}_w{w}.json"
                m = measure([nn_py, HERE / "loading_nnunet.py", "--dataset", ds_name, "--config", CONFIG,
                             "--batches", a.load_batches, "--settle", a.load_settle, "--out", out],
                            f"n{n}_load_nnunet", True, {"nnUNet_n_proc_DA": w})
                if out.is_file():
                    m.update(json.loads(out.read_text()))
                N[f"load_{w}"] = m
                say(f"  segpipe {rate(S[f'load_{w}'])}; nnU-Net {rate(N[f'load_{w}'])}")
                save()

        # ---- one training iteration (the models predict below)
        if n in a.model_at and "train" not in a.skip:
            say(f"N={n}: training, 2 epochs x 1 iteration (epoch 0 = warm-up), batch as planned, cpu")
            S["train"] = measure(sp("train", "--workspace", ws, "--name", SP_NAME, "--config", CONFIG, "--fold", 0,
                                    "--epochs", 2, "--iterations-per-epoch", 1, "--val-iterations", 1,
                                    "--no-validation", "--force", "--workers", 1, "--device", "cpu"),
                                 f"n{n}_train_segpipe")
            log = spd / "results" / CONFIG / "fold_0" / "log.jsonl"
            if "error" not in S["train"] and log.is_file():
                hist = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
                S["train"]["epochs"] = [{"iterations": h["iterations"], "train_seconds": h["train_seconds"]}
                                        for h in hist]
                S["train"]["iteration_s"] = hist[-1]["train_seconds"] / hist[-1]["iterations"]
            if not shared:
                shared = share_splits(spd, nn_ds_pre)
            out = run / "logs" / f"train_nnunet_n{n}.json"
            N["train"] = measure([nn_py, HERE / "nnunet_driver.py", "throughput", "--dataset", ds_name,
                                  "--config", CONFIG, "--iterations", 1, "--epochs", 2, "--out", out],
                                 f"n{n}_train_nnunet", True, {"nnUNet_n_proc_DA": 1})
            if out.is_file():
                d = json.loads(out.read_text())
                N["train"].update(d)
                last = d["epochs"][-1]
                N["train"]["iteration_s"] = last["train_seconds"] / last["iterations"]
            say(f"  segpipe {fmt_it(S['train'])}; nnU-Net {fmt_it(N['train'])}")
            save()

        # ---- prediction of the largest case
        if n in a.model_at and "predict" not in a.skip and "train" not in a.skip:
            patch = (sp_cfg or {}).get("patch_size")
            spacing = (sp_cfg or {}).get("spacing")
            pin = run / "predict_in" / f"n{n}"
            crop = crop_case(images / "imagesTr" / f"{largest}_0000.nii.gz", pin / f"{largest}_0000.nii.gz",
                             patch, spacing, a.predict_crop) if patch else {}
            entry["predict_input"] = {"case": largest, **crop}
            say(f"N={n}: predicting {largest} ({crop.get('input_size_xyz')} voxels x,y,z; about "
                f"{crop.get('n_windows_step_0.5')} windows of {patch}), {'with' if a.mirror else 'without'} mirroring")
            o = run / "predict_out" / f"segpipe_n{n}"
            S["predict"] = measure(sp("predict", "--workspace", ws, "--name", SP_NAME, "--input", pin, "--output", o,
                                      "--config", CONFIG, "--folds", 0, "--device", "cpu", "--workers", 1,
                                      *([] if a.mirror else ["--no-mirror"])), f"n{n}_predict_segpipe")
            S["predict"]["output_written"] = (o / f"{largest}.nii.gz").is_file()
            o = run / "predict_out" / f"nnunet_n{n}"
            N["predict"] = measure(nn("nnUNetv2_predict", "-i", pin, "-o", o, "-d", ds_id, "-c", CONFIG, "-f", 0,
                                      "-device", "cpu", "-npp", 1, "-nps", 1,
                                      *([] if a.mirror else ["--disable_tta"])), f"n{n}_predict_nnunet", True)
            N["predict"]["output_written"] = (o / f"{largest}.nii.gz").is_file()
            say(f"  segpipe {fmt_m(S['predict'])}; nnU-Net {fmt_m(N['predict'])}")
            save()

    table = save(final=True)
    md = out_md.read_text()
    if a.docs:
        put_in_docs(Path(a.docs), md)
    print()
    print(table)
    say(f"done in {res['total_wall_s'] / 60:.1f} min; wrote {out_json}, {out_md}" + (f", {a.docs}" if a.docs else ""))


def share_splits(spd: Path, nn_ds_pre: Path) -> bool:
    """segpipe's splits.json (made on its first use) -> nnU-Net's splits_final.json: same folds for both."""
    try:
        sj = json.loads((spd / "splits.json").read_text())
    except (OSError, ValueError):
        say("  segpipe made no splits.json; nnU-Net makes its own folds")
        return False
    folds = [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in sj["folds"]]
    (nn_ds_pre / "splits_final.json").write_text(json.dumps(folds, indent=2))
    return True


# ---------------------------------------------------------------------------------------------- report
def mb(b) -> str:
    return "n/a" if b is None else f"{b / MB:.0f} MB"


def fmt_m(m: dict) -> str:
    if "error" in m:
        return "failed"
    return f"{m['wall_s']:.1f} s, {m['peak_rss_bytes'] / GB:.2f} GB"


def rate(m: dict) -> str:
    if m.get("batches_per_s") is None:
        return "failed"
    return f"{m['batches_per_s']:.3f} batches/s, {m['peak_rss_bytes'] / GB:.2f} GB"


def fmt_it(m: dict) -> str:
    if m.get("iteration_s") is None:
        return "failed"
    return f"{m['iteration_s']:.1f} s/iteration, {m['peak_rss_bytes'] / GB:.2f} GB"


def _get(m: dict | None, key: str, scale: float = 1.0):
    if not m or "error" in m or m.get(key) is None:
        return None
    return m[key] / scale


# (label, unit, getter(tool dict) -> value or None, growth slope reported)
METRICS = [
    ("fingerprint+plan wall", "s", lambda t: _get(t.get("fp"), "wall_s"), True),
    ("fingerprint+plan peak RSS", "GB", lambda t: _get(t.get("fp"), "peak_rss_bytes", GB), True),
    ("preprocess wall", "s", lambda t: _get(t.get("pp"), "wall_s"), True),
    ("preprocess peak RSS", "GB", lambda t: _get(t.get("pp"), "peak_rss_bytes", GB), True),
    ("preprocessed data on disk (config folder)", "MB", lambda t: _get(t.get("disk"), "config_bytes", MB), True),
    ("everything preprocess wrote", "MB", lambda t: _get(t.get("disk"), "all_bytes", MB), True),
    ("loading, 1 worker", "batches/s", lambda t: _get(t.get("load_1"), "batches_per_s"), False),
    ("loading, 1 worker, peak RSS", "GB", lambda t: _get(t.get("load_1"), "peak_rss_bytes", GB), True),
    ("loading, 2 workers", "batches/s", lambda t: _get(t.get("load_2"), "batches_per_s"), False),
    ("loading, 2 workers, peak RSS", "GB", lambda t: _get(t.get("load_2"), "peak_rss_bytes", GB), True),
    ("training iteration", "s", lambda t: _get(t.get("train"), "iteration_s"), True),
    ("train command (2 iterations) wall", "s", lambda t: _get(t.get("train"), "wall_s"), True),
    ("train command peak RSS", "GB", lambda t: _get(t.get("train"), "peak_rss_bytes", GB), True),
    ("predict largest case wall", "s", lambda t: _get(t.get("predict"), "wall_s"), True),
    ("predict peak RSS", "GB", lambda t: _get(t.get("predict"), "peak_rss_bytes", GB), True),
]


def _f(v, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "batches/s":
        return f"{v:.3f}"
    if unit == "GB":
        return f"{v:.2f}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def report(res: dict) -> tuple[str, str]:
    per_n = res["per_n"]
    ns = sorted(int(n) for n in per_n)
    rows, growth = [], []
    for label, unit, get, want_slope in METRICS:
        pts = []
        for n in ns:
            e = per_n[str(n)]
            s, v = get(e["segpipe"]), get(e["nnunet"])
            if s is None and v is None:
                continue
            ratio = f"{s / v:.2f}" if (s is not None and v) else "n/a"
            rows.append((f"{label} ({unit})", str(n), _f(s, unit), _f(v, unit), ratio))
            if s is not None and v is not None:
                pts.append((n, s, v))
        if want_slope and len(pts) >= 2:
            xs = [p[0] for p in pts]
            ss, sv = slope(xs, [p[1] for p in pts]), slope(xs, [p[2] for p in pts])
            ratio = f"{ss / sv:.2f}" if (ss is not None and sv) else "n/a"
            growth.append((f"{label} ({unit} per case)", f"{ss:+.3g}", f"{sv:+.3g}", ratio,
                           ", ".join(str(x) for x in xs)))
    head = ("metric", "N", "segpipe", "nnU-Net", "segpipe/nnU-Net")
    ghead = ("growth per case (slope vs N)", "segpipe", "nnU-Net", "segpipe/nnU-Net", "Ns")

    def text_table(h, rs):
        widths = [max(len(str(r[i])) for r in [h] + rs) for i in range(len(h))]
        return "\n".join("  ".join(str(r[i]).ljust(widths[i]) for i in range(len(h))) for r in [h] + rs)

    def md_table(h, rs):
        return ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"] + [
            "| " + " | ".join(str(x) for x in r) + " |" for r in rs]

    table = text_table(head, rows) + ("\n\n" + text_table(ghead, growth) if growth else "")
    st, m = res["settings"], res["machine"]
    la0 = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    la1 = ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", m["loadavg_start"]))
    plans = {n: per_n[str(n)].get("plans") for n in ns}
    pin = {n: per_n[str(n)].get("predict_input") for n in ns if per_n[str(n)].get("predict_input")}
    lines = [
        f"Generated by `benchmarks/scale_benchmark.py` ({'--quick, ' if st.get('quick') else ''}"
        f"{'complete' if res.get('complete') else 'INCOMPLETE (partial results)'}); raw numbers in "
        f"`benchmarks/results/{st['results_name']}.json`.",
        "",
        f"- Date (UTC): {res['started_utc']}; wall time of the run {res.get('total_wall_s', 0) / 60:.1f} min "
        f"(image synthesis {res.get('image_generation_s', 0) / 60:.1f} min of it, 0 when cached)",
        f"- Machine: {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu_model']}; load average at start {la0}, "
        f"at end {la1}",
        f"- segpipe {m['segpipe_version']} (torch {m['segpipe_torch']}); nnU-Net v2 {m['nnunet_venv']['nnunetv2']} "
        f"(torch {m['nnunet_venv']['torch']}), Python {m['python']}",
        f"- Data: headneck_oar_labels, first N of cases.csv, images by make_images.py (downsample "
        f"{st['downsample']}); Ns {ns}; planner memory target "
        f"{str(st['memory_gb']) + ' GB' if st['memory_gb'] else 'default (8 GB, both)'}",
        f"- Plans {CONFIG} per N (spacing in mm, each tool's own axis order): "
        + "; ".join(f"N={n}: segpipe {p['segpipe']}, nnU-Net {p['nnunet']}" for n, p in plans.items() if p),
        f"- Fingerprint/preprocess with {st['workers']} processes each; loading rates over {st['load_batches']} "
        f"batches after one warm-up batch per worker and {st['load_settle']} untimed ones; one measurement each "
        "(no repeats)",
    ]
    for n, p in pin.items():
        what = "whole case" if p["crop_factor"] <= 0 else "centre crop"
        lines.append(f"- Predict input at N={n}: {p['case']}, {what} {p['input_size_xyz']} voxels (x, y, z) of "
                     f"{p['source_size_xyz']}, "
                     f"{p['n_windows_step_0.5']} windows of the plan's patch; "
                     f"{'with' if st['mirror'] else 'without'} mirroring for both")
    lines += ["", "Ratio = segpipe / nnU-Net: for times, memory and disk < 1 is better, for batches/s > 1. What each "
              "row measures: docs/benchmarks.md, \"Scale benchmark\". Timings taken while other processes ran are "
              "not usable (see the load averages).", ""]
    lines += md_table(head, rows)
    if growth:
        lines += ["", "Growth per case: least-squares slope of the value over N (both tools measured at the same Ns).",
                  ""]
        lines += md_table(ghead, growth)
    lines += ["", "Commands (nnU-Net ones with nnUNet_raw/_preprocessed/_results under "
              "`benchmarks/work_scale/run/nnunet/`):", "", "```"]
    for phase, cmds in res.get("commands", {}).items():
        lines.append(f"# {phase}")
        lines += cmds[:3]
    lines += ["```", ""]
    return "\n".join(lines), table


def put_in_docs(path: Path, md: str) -> None:
    """Replace the text between the scale-benchmark markers of ``path`` (left alone without them)."""
    try:
        doc = path.read_text()
    except OSError as e:
        say(f"docs not updated: {e}")
        return
    i, j = doc.find(DOCS_BEGIN), doc.find(DOCS_END)
    if i < 0 or j < i:
        say(f"docs not updated: no {DOCS_BEGIN} ... {DOCS_END} block in {path}")
        return
    path.write_text(doc[:i + len(DOCS_BEGIN)] + "\n" + md.rstrip() + "\n" + doc[j:])


if __name__ == "__main__":
    main()
