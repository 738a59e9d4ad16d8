#!/usr/bin/env python3
"""Side-by-side benchmark: segpipe vs nnU-Net v2 (2.8.1) on the MSD hippocampus data, same machine, one run.

Run with segpipe's venv python (``make bench``). nnU-Net is driven through its own venv
(``benchmarks/.nnunet_venv``, created here if missing) by subprocess only: its CLI executables and
``benchmarks/nnunet_driver.py`` (its Python API). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NNUNET_VERSION = "2.8.1"
TORCH_PIN = "torch==2.13.0"
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
SP_NAME = "hippocampus"
LABELS = ["background=0", "anterior=1", "posterior=2"]
CLASSES = ["anterior", "posterior"]
PAGE = os.sysconf("SC_PAGE_SIZE")
DOCS_KEEP = "<!-- run_benchmark.py rewrites the page above this line and keeps everything from here on -->"
T_START = time.monotonic()


def say(msg: str) -> None:
    el = time.monotonic() - T_START
    print(f"[{int(el // 60):3d}:{int(el % 60):02d}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- processes
def tree_rss(root: int) -> int:
    """Resident memory (bytes) of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            rest = s[s.rfind(")") + 2:].split()
            pid = int(d)
            children.setdefault(int(rest[1]), []).append(pid)
            rss[pid] = int(rest[21]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    total, stack, seen = 0, [root], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


class Runner:
    def __init__(self, logdir: Path, nn_env: dict):
        self.logdir = logdir
        self.nn_env = nn_env
        self.n = 0
        self.commands: dict[str, list[str]] = {}

    def run(self, cmd: list[str], phase: str, nnunet: bool = False, cwd: Path | None = None) -> dict:
        """Run ``cmd``; wall time and peak RSS of its process tree (polled every 0.1 s)."""
        self.n += 1
        env = dict(os.environ)
        shown = shlex.join(str(c) for c in cmd)
        if nnunet:
            env.update(self.nn_env)
            shown = " ".join([f"{k}={v}" for k, v in self.nn_env.items() if k == "nnUNet_n_proc_DA"] + [shown])
        self.commands.setdefault(phase, [])
        if shown not in self.commands[phase]:
            self.commands[phase].append(shown)
        log = self.logdir / f"{self.n:03d}_{phase}.log"
        peak = 0
        with open(log, "w") as lf:
            lf.write(shown + "\n")
            lf.flush()
            t0 = time.monotonic()
            proc = subprocess.Popen([str(c) for c in cmd], stdout=lf, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(cwd) if cwd else None)
            while proc.poll() is None:
                try:
                    peak = max(peak, tree_rss(proc.pid))
                except Exception:  # noqa: BLE001 - a process that just ended has no RSS to read
                    pass
                time.sleep(0.1)
            wall = time.monotonic() - t0
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            raise RuntimeError(f"command failed ({proc.returncode}): {shown}\nlog {log}:\n" + "\n".join(tail))
        return {"wall_s": wall, "peak_rss_bytes": peak}


def rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------- setup
def ensure_nnunet_venv(venv: Path, python: str) -> None:
    if (venv / "bin" / "nnUNetv2_predict").exists():
        say(f"nnU-Net venv present: {venv}")
        return
    say(f"creating the nnU-Net venv {venv} (CPU torch pinned by benchmarks/nnunet_constraints.txt)")
    rmtree(venv)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    cons = HERE / "nnunet_constraints.txt"
    subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", "-c", str(cons),
                    TORCH_PIN, f"nnunetv2=={NNUNET_VERSION}"], check=True)
    say("nnU-Net venv ready")


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def machine_info(nn_python: Path) -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem_kb = int(line.split()[1])
    from importlib.metadata import version
    nn = subprocess.run([str(nn_python), "-c", "import importlib.metadata as m; import json; print(json.dumps("
                         "{k: m.version(k) for k in ['torch', 'nnunetv2', 'torchvision']}))"],
                        capture_output=True, text=True, check=True)
    return {"cores": os.cpu_count(), "ram_gb": round(mem_kb / 1024 ** 2, 1), "cpu_model": cpu,
            "python": platform.python_version(), "segpipe_torch": version("torch"),
            "segpipe_version": version("segpipe"), "nnunet_venv": json.loads(nn.stdout.strip().splitlines()[-1]),
            "loadavg_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/hippocampus_mri"),
                    help="MSD-layout folder (imagesTr/, labelsTr/)")
    ap.add_argument("--work", type=Path, default=HERE / "work", help="scratch folder (wiped at start)")
    ap.add_argument("--nnunet-venv", type=Path, default=HERE / ".nnunet_venv")
    ap.add_argument("--cases", type=int, default=0, help="use only the first N cases (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every timing; the median is reported")
    ap.add_argument("--workers", type=int, default=2, help="processes for fingerprint / preprocessing")
    ap.add_argument("--tp-iterations", type=int, default=5,
                    help="training-throughput iterations measured (after a warm-up epoch of as many); "
                         "about 10 s per iteration per tool at batch 9 on 2 cores")
    ap.add_argument("--tp-batch-size", type=int, default=9)
    ap.add_argument("--train-minutes", type=float, default=8.0, help="equal wall-clock training budget")
    ap.add_argument("--eval-cases", type=int, default=20,
                    help="fold-0 validation cases predicted and scored (0: all of them)")
    ap.add_argument("--infer-cases", type=int, default=5, help="held-out cases for the inference timing")
    ap.add_argument("--nnunet-da-procs", type=int, default=None,
                    help="nnUNet_n_proc_DA for the budget training (default: nnU-Net's own default, "
                         "min(12, cores))")
    ap.add_argument("--skip", nargs="*", default=[], choices=["fp", "pp", "tp", "inf"],
                    help="phases to leave out (for development)")
    ap.add_argument("--results", type=Path, default=HERE, help="folder for results.md / results.json")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                    help="also write the markdown here ('' to skip)")
    a = ap.parse_args()

    started = datetime.datetime.now(datetime.timezone.utc)
    bin_dir = Path(sys.executable).parent
    segpipe = [str(bin_dir / "segpipe")] if (bin_dir / "segpipe").exists() else [sys.executable, "-m", "segpipe"]
    nnv = a.nnunet_venv.resolve()
    nn_bin = nnv / "bin"

    # ---- 1. setup
    say("phase 1: setup")
    ensure_nnunet_venv(nnv, "python3")
    work = a.work.resolve()
    rmtree(work)
    (work / "logs").mkdir(parents=True)
    nn_raw, nn_pre, nn_res = work / "nnunet" / "raw", work / "nnunet" / "preprocessed", work / "nnunet" / "results"
    for p in (nn_raw, nn_pre, nn_res):
        p.mkdir(parents=True)
    nn_env = {"nnUNet_raw": str(nn_raw), "nnUNet_preprocessed": str(nn_pre), "nnUNet_results": str(nn_res)}
    R = Runner(work / "logs", nn_env)

    src = a.data.resolve()
    cases = sorted(p.name[:-len(".nii.gz")] for p in (src / "imagesTr").glob("*.nii.gz")
                   if not p.name.startswith("."))
    if a.cases:
        cases = cases[:a.cases]
    msd = work / "raw_msd"
    ds = nn_raw / DATASET_NAME
    for c in cases:
        link(src / "imagesTr" / f"{c}.nii.gz", msd / "imagesTr" / f"{c}.nii.gz")
        link(src / "labelsTr" / f"{c}.nii.gz", msd / "labelsTr" / f"{c}.nii.gz")
        link(src / "imagesTr" / f"{c}.nii.gz", ds / "imagesTr" / f"{c}_0000.nii.gz")
        link(src / "labelsTr" / f"{c}.nii.gz", ds / "labelsTr" / f"{c}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "anterior": 1, "posterior": 2},
         "numTraining": len(cases), "file_ending": ".nii.gz"}, indent=4))
    say(f"{len(cases)} cases linked into {msd} (segpipe) and {ds} (nnU-Net)")
    info = machine_info(nn_bin / "python")
    say(f"machine: {info['cores']} cores, {info['ram_gb']} GB, {info['cpu_model']}, load {info['loadavg_start']}")

    ws = work / "segpipe" / "ws"
    spd = ws / SP_NAME
    nn_ds_pre = nn_pre / DATASET_NAME
    res: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                 "n_cases": len(cases), "machine": info, "started_utc": started.isoformat(timespec="seconds"),
                 "phases": {}}
    P = res["phases"]

    def save_partial():
        """results.json / results.md with what is measured so far (for an interrupted run)."""
        res["commands"] = R.commands
        res["complete"] = False
        r2 = json.loads(json.dumps(res, default=str))
        try:
            md, _ = report(r2, a)
            (a.results / "results.partial.md").write_text(md)
        except Exception as e:  # noqa: BLE001 - a partial report must never stop the benchmark
            say(f"  (partial report failed: {e})")
        (a.results / "results.partial.json").write_text(json.dumps(r2, indent=2, default=str))

    def sp(*args):
        return segpipe + [str(x) for x in args]

    def nn(exe, *args):
        return [str(nn_bin / exe)] + [str(x) for x in args]

    # ---- 2a. fingerprint + plan (fresh folders each repeat)
    fp = {"segpipe": [], "nnunet": []}
    for r in range(a.repeats):
        if "fp" in a.skip and r > 0:
            break
        say(f"phase 2a: fingerprint+plan, repeat {r + 1}/{a.repeats}")
        rmtree(ws)
        t = [R.run(sp("onboard", msd, "--name", SP_NAME, "--workspace", ws, "--channels", "MRI", "--labels", *LABELS,
                      "--allow-external-links", "--force", "--workers", a.workers), "fp_segpipe"),
             R.run(sp("fingerprint", "--workspace", ws, "--name", SP_NAME, "--force", "--workers", a.workers),
                   "fp_segpipe"),
             R.run(sp("plan", "--workspace", ws, "--name", SP_NAME, "--force"), "fp_segpipe")]
        fp["segpipe"].append({"wall_s": sum(x["wall_s"] for x in t), "peak_rss_bytes": max(x["peak_rss_bytes"] for x in t),
                              "parts_s": [x["wall_s"] for x in t]})
        rmtree(nn_ds_pre)
        t = [R.run(nn("nnUNetv2_extract_fingerprint", "-d", DATASET_ID, "-np", a.workers, "--clean"), "fp_nnunet", True),
             R.run(nn("nnUNetv2_plan_experiment", "-d", DATASET_ID), "fp_nnunet", True)]
        fp["nnunet"].append({"wall_s": sum(x["wall_s"] for x in t), "peak_rss_bytes": max(x["peak_rss_bytes"] for x in t),
                             "parts_s": [x["wall_s"] for x in t]})
        say(f"  segpipe {fp['segpipe'][-1]['wall_s']:.1f} s, nnU-Net {fp['nnunet'][-1]['wall_s']:.1f} s")
    P["fingerprint_plan"] = fp
    save_partial()

    sp_plans = json.loads((spd / "plans.json").read_text())
    nn_plans = json.loads((nn_ds_pre / "nnUNetPlans.json").read_text())
    nn_cfg = nn_plans["configurations"]["3d_fullres"]
    sp_cfg = sp_plans.get("configurations", {}).get("3d_fullres", {})
    res["plans"] = {"segpipe_3d_fullres": {k: sp_cfg.get(k) for k in ("patch_size", "batch_size", "spacing")},
                    "nnunet_3d_fullres": {k: nn_cfg.get(k) for k in ("patch_size", "batch_size", "spacing")}}
    say(f"plans 3d_fullres: segpipe {res['plans']['segpipe_3d_fullres']}, nnU-Net {res['plans']['nnunet_3d_fullres']}")

    # ---- 2b. preprocessing 3d_fullres
    pp = {"segpipe": [], "nnunet": []}
    for r in range(a.repeats):
        if "pp" in a.skip and r > 0:
            break
        say(f"phase 2b: preprocess 3d_fullres, repeat {r + 1}/{a.repeats}")
        pp["segpipe"].append(R.run(sp("preprocess", "--workspace", ws, "--name", SP_NAME, "--config", "3d_fullres",
                                      "--workers", a.workers, "--force"), "pp_segpipe"))
        rmtree(nn_ds_pre / "nnUNetPlans_3d_fullres")
        rmtree(nn_ds_pre / "gt_segmentations")
        pp["nnunet"].append(R.run(nn("nnUNetv2_preprocess", "-d", DATASET_ID, "-c", "3d_fullres", "-np", a.workers),
                                  "pp_nnunet", True))
        say(f"  segpipe {pp['segpipe'][-1]['wall_s']:.1f} s, nnU-Net {pp['nnunet'][-1]['wall_s']:.1f} s")
    P["preprocess"] = pp
    save_partial()

    sp_fold = ws / SP_NAME / "results" / "3d_fullres" / "fold_0"
    nn_fold = nn_res / DATASET_NAME / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_0"
    driver = [str(nn_bin / "python"), str(HERE / "nnunet_driver.py")]

    def share_splits() -> dict:
        """segpipe's splits.json (made by its first train) -> nnU-Net's splits_final.json, same 5 folds."""
        sj = json.loads((spd / "splits.json").read_text())
        folds = [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in sj["folds"]]
        (nn_ds_pre / "splits_final.json").write_text(json.dumps(folds, indent=2))
        return folds[0]

    # ---- 2c. training throughput
    tp = {"segpipe": [], "nnunet": []}
    fold0 = None
    for r in range(a.repeats):
        if "tp" in a.skip and r > 0:
            break
        say(f"phase 2c: training throughput (2 epochs x {a.tp_iterations} it, batch {a.tp_batch_size}; "
            f"epoch 0 = warm-up), repeat {r + 1}/{a.repeats}")
        m = R.run(sp("train", "--workspace", ws, "--name", SP_NAME, "--config", "3d_fullres", "--fold", "0",
                     "--epochs", 2, "--iterations-per-epoch", a.tp_iterations, "--val-iterations", 1,
                     "--batch-size", a.tp_batch_size, "--no-validation", "--force", "--workers", 1, "--device", "cpu"),
                  "tp_segpipe")
        hist = [json.loads(line) for line in (sp_fold / "log.jsonl").read_text().splitlines() if line.strip()]
        m["epochs"] = [{"iterations": h["iterations"], "train_seconds": h["train_seconds"]} for h in hist]
        last = hist[-1]
        m["it_per_s"] = last["iterations"] / last["train_seconds"]
        tp["segpipe"].append(m)
        if fold0 is None:
            fold0 = share_splits()
        rmtree(nn_fold)
        out = work / "logs" / f"nn_tp_{r}.json"
        R.nn_env["nnUNet_n_proc_DA"] = "1"  # one augmentation process, like segpipe's --workers 1
        m = R.run(driver + ["throughput", "--dataset", DATASET_NAME, "--iterations", a.tp_iterations, "--epochs", 2,
                            "--batch-size", a.tp_batch_size, "--out", out], "tp_nnunet", True)
        R.nn_env.pop("nnUNet_n_proc_DA")
        d = json.loads(out.read_text())
        m.update(d)
        last = d["epochs"][-1]
        m["it_per_s"] = last["iterations"] / last["train_seconds"]
        tp["nnunet"].append(m)
        say(f"  segpipe {tp['segpipe'][-1]['it_per_s']:.3f} it/s, nnU-Net {tp['nnunet'][-1]['it_per_s']:.3f} it/s")
    P["train_throughput"] = tp
    save_partial()
    if fold0 is None:
        raise SystemExit("no splits")
    val_cases = sorted(fold0["val"])
    eval_cases = val_cases[:a.eval_cases] if a.eval_cases else val_cases
    res["fold0"] = {"n_train": len(fold0["train"]), "n_val": len(val_cases), "eval_cases": eval_cases}

    # ---- 3. accuracy at equal wall-clock budget
    acc = {}
    budget = f"{a.train_minutes:g}m"
    if True:  # always: the inference timing uses these models
        say(f"phase 3: training fold 0 for {budget} each (segpipe CPU recipe batch 2; nnU-Net default trainer)")
        rmtree(sp_fold)
        m = R.run(sp("train", "--workspace", ws, "--name", SP_NAME, "--config", "3d_fullres", "--fold", "0",
                     "--budget", budget, "--batch-size", 2, "--iterations-per-epoch", 50, "--val-iterations", 10,
                     "--no-validation", "--force", "--device", "cpu"), "train_segpipe")
        hist = [json.loads(line) for line in (sp_fold / "log.jsonl").read_text().splitlines() if line.strip()]
        m.update(epochs=len(hist), iterations=sum(h["iterations"] for h in hist), batch_size=2,
                 training_seconds=hist[-1]["elapsed_seconds"] if hist else None)
        acc["train_segpipe"] = m
        say(f"  segpipe: {m['epochs']} epochs, {m['iterations']} iterations, wall {m['wall_s']:.0f} s")
        rmtree(nn_fold.parent)
        out = work / "logs" / "nn_budget.json"
        env_da = {"nnUNet_n_proc_DA": str(a.nnunet_da_procs)} if a.nnunet_da_procs else {}
        R.nn_env.update(env_da)
        m = R.run(driver + ["budget", "--dataset", DATASET_NAME, "--minutes", a.train_minutes, "--out", out],
                  "train_nnunet", True)
        for k in env_da:
            R.nn_env.pop(k)
        m.update(json.loads(out.read_text()))
        acc["train_nnunet"] = m
        P["accuracy"] = acc
        save_partial()
        say(f"  nnU-Net: {len(m['epochs'])} epochs (started), {m['iterations']} iterations, wall {m['wall_s']:.0f} s")

        ev_in, ev_ref = work / "eval_in", work / "eval_ref"
        for c in eval_cases:
            link(src / "imagesTr" / f"{c}.nii.gz", ev_in / f"{c}_0000.nii.gz")
            link(src / "labelsTr" / f"{c}.nii.gz", ev_ref / f"{c}.nii.gz")
        say(f"phase 3: predicting {len(eval_cases)} fold-0 validation cases with both models (mirroring on)")
        sp_pred, nn_pred = work / "pred_acc" / "segpipe", work / "pred_acc" / "nnunet"
        acc["predict_segpipe"] = R.run(sp("predict", "--workspace", ws, "--name", SP_NAME, "--input", ev_in,
                                          "--output", sp_pred, "--config", "3d_fullres", "--folds", 0,
                                          "--device", "cpu"), "acc_predict_segpipe")
        acc["predict_nnunet"] = R.run(nn("nnUNetv2_predict", "-i", ev_in, "-o", nn_pred, "-d", DATASET_ID,
                                         "-c", "3d_fullres", "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1),
                                      "acc_predict_nnunet", True)
        for tool, pred in (("segpipe", sp_pred), ("nnunet", nn_pred)):
            ev_out = work / "eval" / tool
            R.run(sp("evaluate", "--pred", pred, "--ref", ev_ref, "--labels", *LABELS, "--output", ev_out),
                  "evaluate")
            s = json.loads((ev_out / "summary.json").read_text())
            s = s.get("summary", s)
            acc[f"dice_{tool}"] = {c: s["mean"][c]["dice"] for c in CLASSES}
            acc[f"dice_{tool}"]["foreground_mean"] = s["foreground_mean_dice"]
            acc[f"hd95_{tool}"] = {c: s["mean"][c].get("hd95_mm") for c in CLASSES}
        say(f"  Dice segpipe {acc['dice_segpipe']}, nnU-Net {acc['dice_nnunet']}")
    P["accuracy"] = acc
    save_partial()

    # ---- 2d. inference timing with the budget-trained models
    inf = {}
    if "inf" not in a.skip:
        inf_cases = val_cases[:a.infer_cases]
        inf_in = work / "infer_in"
        for c in inf_cases:
            link(src / "imagesTr" / f"{c}.nii.gz", inf_in / f"{c}_0000.nii.gz")
        for mode in ("mirror", "no_mirror"):
            inf[mode] = {"segpipe": [], "nnunet": []}
        for r in range(a.repeats):
            for mode in ("mirror", "no_mirror"):
                say(f"phase 2d: inference {mode}, {len(inf_cases)} cases, repeat {r + 1}/{a.repeats}")
                o = work / "pred_inf" / f"segpipe_{mode}"
                rmtree(o)
                m = R.run(sp("predict", "--workspace", ws, "--name", SP_NAME, "--input", inf_in, "--output", o,
                             "--config", "3d_fullres", "--folds", 0, "--device", "cpu",
                             *(["--no-mirror"] if mode == "no_mirror" else [])), f"inf_{mode}_segpipe")
                m["s_per_case"] = m["wall_s"] / len(inf_cases)
                inf[mode]["segpipe"].append(m)
                o = work / "pred_inf" / f"nnunet_{mode}"
                rmtree(o)
                m = R.run(nn("nnUNetv2_predict", "-i", inf_in, "-o", o, "-d", DATASET_ID, "-c", "3d_fullres",
                             "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1,
                             *(["--disable_tta"] if mode == "no_mirror" else [])), f"inf_{mode}_nnunet", True)
                m["s_per_case"] = m["wall_s"] / len(inf_cases)
                inf[mode]["nnunet"].append(m)
                P["inference"] = inf
                res["inference_cases"] = inf_cases
                save_partial()
                say(f"  segpipe {inf[mode]['segpipe'][-1]['s_per_case']:.2f} s/case, "
                    f"nnU-Net {inf[mode]['nnunet'][-1]['s_per_case']:.2f} s/case")
        res["inference_cases"] = inf_cases
    P["inference"] = inf

    res["commands"] = R.commands
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["total_wall_s"] = time.monotonic() - T_START
    res["complete"] = True
    md, table = report(res, a)
    (a.results / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (a.results / "results.md").write_text(md)
    if str(a.docs) not in ("", "."):
        a.docs.parent.mkdir(parents=True, exist_ok=True)
        old = a.docs.read_text() if a.docs.is_file() else ""
        keep = old.find(DOCS_KEEP)  # sections written by others (the scale benchmark, peak_conv.py) stay
        a.docs.write_text(md.rstrip() + "\n\n" + old[keep:] if keep >= 0 else md)
    print()
    print(table)
    say(f"done in {res['total_wall_s'] / 60:.1f} min; wrote {a.results / 'results.md'}, "
        f"{a.results / 'results.json'}" + (f", {a.docs}" if str(a.docs) not in ("", ".") else ""))


# ---------------------------------------------------------------------------------------------- report
def report(res: dict, a) -> tuple[str, str]:
    P = res["phases"]
    GB = 1024 ** 3
    rows = []  # (metric, segpipe, nnunet, ratio, better, target text, met)

    def add(metric, s, n, better, fmt, target=None, target_ok=None):
        ratio = (s / n) if (s is not None and n) else None
        if target is None:
            met = ""
        elif s is None or n is None:
            met = "n/a"
        elif ratio is None:  # nnU-Net value 0
            met = "yes" if (better == ">1" and s >= 0) or (better == "<1" and s <= 0) else "no"
        else:
            met = "yes" if target_ok(ratio) else "no"
        rows.append((metric, fmt.format(s) if s is not None else "n/a", fmt.format(n) if n is not None else "n/a",
                     f"{ratio:.3f}" if ratio is not None else "n/a", better, target or "", met))

    def med(phase_list, key):
        return median([x.get(key) for x in phase_list]) if phase_list else None

    fp = P.get("fingerprint_plan", {})
    add("onboard+fingerprint+plan time (s)", med(fp.get("segpipe"), "wall_s"), med(fp.get("nnunet"), "wall_s"),
        "<1", "{:.1f}")
    pp = P.get("preprocess", {})
    add("preprocess 3d_fullres time (s)", med(pp.get("segpipe"), "wall_s"), med(pp.get("nnunet"), "wall_s"),
        "<1", "{:.1f}", "<= 1/3", lambda r: r <= 1 / 3)
    tp = P.get("train_throughput", {})
    add(f"training throughput, batch {a.tp_batch_size} (it/s)", med(tp.get("segpipe"), "it_per_s"),
        med(tp.get("nnunet"), "it_per_s"), ">1", "{:.3f}", ">= 1.2", lambda r: r >= 1.2)
    acc = P.get("accuracy", {})
    ds, dn = acc.get("dice_segpipe"), acc.get("dice_nnunet")
    equal_dice = ds is not None and dn is not None and ds["foreground_mean"] >= dn["foreground_mean"] - 0.01
    inf = P.get("inference", {})
    for mode, label in (("mirror", "with mirroring"), ("no_mirror", "without mirroring")):
        if mode in inf:
            add(f"inference {label} (s/case)", med(inf[mode]["segpipe"], "s_per_case"),
                med(inf[mode]["nnunet"], "s_per_case"), "<1", "{:.2f}", "<= 1/2 at equal Dice",
                lambda r: r <= 0.5 and equal_dice)
    if ds and dn:
        for c in CLASSES + ["foreground_mean"]:
            add(f"Dice {c}, {a.train_minutes:g} min budget", ds[c], dn[c], ">1", "{:.4f}",
                ">= 1" if c == "foreground_mean" else None, (lambda r: r >= 1) if c == "foreground_mean" else None)
    mem_src = [("onboard+fingerprint+plan", fp.get("segpipe"), fp.get("nnunet")),
               ("preprocess", pp.get("segpipe"), pp.get("nnunet")),
               ("train (throughput run)", tp.get("segpipe"), tp.get("nnunet")),
               ("train (budget run)", [acc["train_segpipe"]] if "train_segpipe" in acc else None,
                [acc["train_nnunet"]] if "train_nnunet" in acc else None),
               ("predict, with mirroring", (inf.get("mirror") or {}).get("segpipe"), (inf.get("mirror") or {}).get("nnunet")),
               ("predict, without mirroring", (inf.get("no_mirror") or {}).get("segpipe"),
                (inf.get("no_mirror") or {}).get("nnunet"))]
    for name, s, n in mem_src:
        if s and n:
            add(f"peak RSS {name} (GB)", max(x["peak_rss_bytes"] for x in s) / GB,
                max(x["peak_rss_bytes"] for x in n) / GB, "<1", "{:.2f}", "<= 1", lambda r: r <= 1)

    head = ("metric", "segpipe", "nnU-Net", "segpipe/nnU-Net", "better", "target", "met")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    table = "\n".join("  ".join(str(r[i]).ljust(widths[i]) for i in range(len(head))) for r in [head] + rows)

    m = res["machine"]
    m.setdefault("loadavg_end", os.getloadavg())
    res.setdefault("total_wall_s", time.monotonic() - T_START)
    res.setdefault("fold0", {"n_train": "?", "n_val": "?", "eval_cases": []})
    ts, tn = acc.get("train_segpipe", {}), acc.get("train_nnunet", {})
    lines = [
        "# Benchmark: segpipe vs nnU-Net v2",
        "",
        "Generated by `benchmarks/run_benchmark.py` (`make bench`); raw numbers in `benchmarks/results.json`. "
        "Both tools ran on the same data, on the same machine, in one run.",
        "",
        f"- Date (UTC): {res['started_utc']}; total wall time of the run {res['total_wall_s'] / 60:.1f} min",
        f"- Machine: {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu_model']}, no GPU; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end {', '.join(f'{x:.2f}' for x in m['loadavg_end'])}",
        f"- segpipe {m['segpipe_version']} (torch {m['segpipe_torch']}); nnU-Net v2 {m['nnunet_venv']['nnunetv2']} "
        f"(torch {m['nnunet_venv']['torch']}, torchvision {m['nnunet_venv']['torchvision']}), Python {m['python']}",
        f"- Data: MSD Task04 hippocampus, {res['n_cases']} cases; fold 0 of segpipe's `splits.json` "
        f"({res['fold0']['n_train']} train / {res['fold0']['n_val']} validation), copied to nnU-Net's "
        "`splits_final.json` so both train and validate on identical cases",
        f"- Plans 3d_fullres: segpipe {res.get('plans', {}).get('segpipe_3d_fullres')}; nnU-Net {res.get('plans', {}).get('nnunet_3d_fullres')}",
        f"- Timings repeated {a.repeats} times, median reported; peak memory = max over repeats of the RSS summed "
        "over the process tree, polled from /proc every 0.1 s",
        "",
        "## Results",
        "",
        "Ratio = segpipe / nnU-Net. For times and memory < 1 is better; for throughput and Dice > 1 is better.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    lines += [
        "",
        "## Notes on the measurements",
        "",
        "- **Fingerprint + plan**: segpipe `onboard` + `fingerprint` + `plan` into a fresh workspace vs "
        "`nnUNetv2_extract_fingerprint -np 2 --clean` + `nnUNetv2_plan_experiment` into a fresh preprocessed folder "
        "(both 2 worker processes). No target.",
        "- **Preprocessing**: `segpipe preprocess --config 3d_fullres --workers 2 --force` vs "
        "`nnUNetv2_preprocess -c 3d_fullres -np 2` with its output folder deleted first.",
        f"- **Training throughput**: same patch, batch {a.tp_batch_size} and network (the plans above); 2 epochs of "
        f"{a.tp_iterations} iterations, epoch 0 is the warm-up, iterations/s of epoch 1's training iterations "
        "(data-loading waits included, validation excluded). segpipe: `log.jsonl` `train_seconds` of epoch 1, "
        "1 augmentation worker; nnU-Net: `nnUNetTrainer` subclass (`benchmarks/nnunet_driver.py`) with "
        f"`num_iterations_per_epoch={a.tp_iterations}`, `num_val_iterations_per_epoch=1`, `num_epochs=2`, device cpu, "
        "`nnUNet_n_proc_DA=1`, time from epoch start to the end of the last `train_step`.",
        f"- **Accuracy at equal budget** ({a.train_minutes:g} min of training each, fold 0): segpipe uses its CPU recipe "
        f"(`--budget {a.train_minutes:g}m --batch-size 2 --iterations-per-epoch 50 --val-iterations 10`, lr decays over "
        f"the budget): {ts.get('epochs')} epochs, {ts.get('iterations')} iterations, process wall "
        f"{(ts.get('wall_s') or 0):.0f} s. nnU-Net: default `nnUNetTrainer` (batch {tn.get('batch_size')}, "
        f"250 iterations/epoch, poly lr over 1000 epochs, nnUNet_n_proc_DA "
        f"{tn.get('n_proc_DA') or 'default = min(12, cores)'}), stopped when {a.train_minutes:g} min had passed since "
        f"`on_train_start` (checked before each iteration), then `checkpoint_final.pth` written: "
        f"{tn.get('iterations')} iterations in {len(tn.get('epochs', []))} epoch(s), process wall "
        f"{(tn.get('wall_s') or 0):.0f} s. Both predict the same {len(res['fold0']['eval_cases'])} fold-0 validation "
        "cases (mirroring on), scored by the same code (`segpipe evaluate`).",
        f"- **Inference**: {len(res.get('inference_cases', []))} fold-0 validation cases, the budget-trained models, "
        "seconds per case = wall time of the whole command (start-up and model loading included) / cases. "
        "segpipe `predict --folds 0 [--no-mirror]` (2 I/O workers by default) vs `nnUNetv2_predict -f 0 "
        "[--disable_tta] -device cpu -npp 1 -nps 1`. 'Equal Dice' = segpipe's foreground mean Dice at least "
        "nnU-Net's minus 0.01 in the accuracy phase.",
        "- The machine may have been shared with other jobs during the run (see the load averages); timings are noisy.",
        "- **Read the Dice rows with care**: on 2 CPU cores nnU-Net's default recipe (batch 9, 250 iterations per "
        "epoch, learning rate decaying over 1000 epochs) gets through only a few dozen iterations in a short budget, "
        "so its model may still predict background only (Dice 0). That is what a CPU user of nnU-Net gets for that "
        "time, but it is no comparison of what either tool reaches with a long budget; the 'equal Dice' condition of "
        "the inference target is then met trivially. Use `--train-minutes 60` or more for an accuracy comparison.",
        "",
        "## Commands (first repeat shown; nnU-Net commands ran with nnUNet_raw / nnUNet_preprocessed / "
        "nnUNet_results pointing under `benchmarks/work/nnunet/`)",
        "",
        "```",
    ]
    for phase, cmds in res["commands"].items():
        lines.append(f"# {phase}")
        lines += cmds[:4]
    lines += ["```", ""]
    return "\n".join(lines), table


if __name__ == "__main__":
    main()
