#!/usr/bin/env python3
"""This machine's peak convolution throughput in torch, and the fraction of it segpipe reaches.

Run with segpipe's venv python: ``.venv/bin/python benchmarks/peak_conv.py`` (about 5 minutes on 2 CPU cores).

1. Peak: large convolutions timed alone (forward, under ``torch.inference_mode``), fp32 and bf16 (bf16 both as
   native bfloat16 tensors and as fp32 tensors under CPU autocast): 3D ones (batch 2, 32->32 channels, 3x3x3, 128^3
   voxels; batch 2, 64->64, 3x3x3, 64^3; batch 2, 128->128, 3x3x3, 32^3; padding 1), a 2D one (batch 16, 64->64
   channels, 3x3, 256^2 pixels, padding 1) and the first 3D one forward + backward. FLOPs = 2 x MACs, MACs counted
   exactly: batch x C_out x output voxels x C_in x kernel volume (x 3 for forward + backward: the input gradient and
   the weight gradient are convolutions with the same number of MACs; the bias gradient is not counted). The best of
   ``--repeats`` timed calls after a warm-up is kept; the convolutions are measured again after segpipe's part and
   the better round counts (a short busy spell of other processes then spoils neither). The peak of a precision is
   the highest of its rows.
2. segpipe on the default 3d_fullres plan of the packaged example data (segpipe/data/example/hippocampus,
   20 cases), made by segpipe's own CLI in a temporary workspace (``onboard``, ``fingerprint``, ``plan``,
   ``preprocess --config 3d_fullres``):
   a. a training iteration: the plan's trainer (``segpipe.training.trainer``), batch as planned, its
      ``train_step`` (forward, Dice+CE loss with deep supervision, backward, gradient clipping, SGD step) on
      batches made beforehand by segpipe's batch code (so data loading is not timed). FLOPs = 3 x 2 x the forward
      pass's convolution MACs (counted exactly with forward hooks on every Conv/ConvTranspose module during one
      forward of the batch): the usual approximation that the backward pass costs twice the forward; instance
      norm, activations, loss and optimizer are not counted.
   b. sliding-window inference, forward only: ``segpipe.inference.sliding_window.predict_sliding_window`` (no
      mirroring, the plan's batch size, Gaussian weighting) over every preprocessed example case, network in eval
      mode with deep supervision off (random weights: the arithmetic is the same). FLOPs = 2 x the convolution
      MACs counted with the same hooks during one untimed pass over the cases; reading, resampling and writing
      the cases (the rest of ``segpipe predict``) are not timed.
   Each is run in fp32 and with segpipe's ``--precision bf16`` (CPU autocast), the fraction taken of the peak of
   the same precision.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "segpipe" / "data" / "example" / "hippocampus"
NAME = "hippocampus_example"
CONFIG = "3d_fullres"


# ---------------------------------------------------------------------------------------------- counting
def conv_macs(module: torch.nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Exact multiply-accumulates of one Conv/ConvTranspose call (the bias adds are not counted)."""
    k = math.prod(module.kernel_size)
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        # every input element is multiplied into C_out/groups x kernel outputs
        return inp.numel() * (module.out_channels // module.groups) * k
    return out.numel() * (module.in_channels // module.groups) * k


class MacCounter:
    """Forward hooks on every convolution of ``net`` summing MACs (and counting forward calls of ``net``)."""

    def __init__(self, net: torch.nn.Module):
        self.macs = 0
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in net.modules()
                        if isinstance(m, torch.nn.modules.conv._ConvNd)]
        self.handles.append(net.register_forward_hook(self._count_call))

    def _hook(self, m, inputs, output):
        self.macs += conv_macs(m, inputs[0], output)

    def _count_call(self, m, inputs, output):
        self.calls += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


CPU_SHARE: list[float] = []  # process CPU time / (wall x threads) of the last best_time call


def best_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Best and all wall times of ``repeats`` calls after ``warmup`` calls. Also leaves in CPU_SHARE the
    process's CPU time over wall time x torch threads: near 1 when the threads had the cores to themselves,
    lower when other processes took them (then OpenMP threads wait for each other and times can be several
    times longer)."""
    for _ in range(warmup):
        fn()
    ts = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    CPU_SHARE[:] = [(time.process_time() - c0) / max(1e-9, (time.perf_counter() - w0) * torch.get_num_threads())]
    return min(ts), ts


# ---------------------------------------------------------------------------------------------- peak
def peak_convs(device: torch.device, repeats: int, precisions: list[str]) -> list[dict]:
    rows = []
    specs = [("3D conv 2x32->32, 3x3x3, 128^3", torch.nn.Conv3d, 32, (2, 32, 128, 128, 128)),
             ("3D conv 2x64->64, 3x3x3, 64^3", torch.nn.Conv3d, 64, (2, 64, 64, 64, 64)),
             ("3D conv 2x128->128, 3x3x3, 32^3", torch.nn.Conv3d, 128, (2, 128, 32, 32, 32)),
             ("2D conv 16x64->64, 3x3, 256^2", torch.nn.Conv2d, 64, (16, 64, 256, 256))]
    for prec in precisions:
        modes = ["fp32"] if prec == "fp32" else ["bf16 native", "bf16 autocast"]
        for mode in modes:
            for label, cls, ch, shape in specs:
                torch.manual_seed(0)
                conv = cls(ch, ch, 3, padding=1).to(device)
                x = torch.randn(shape, device=device)
                if mode == "bf16 native":
                    conv, x = conv.to(torch.bfloat16), x.to(torch.bfloat16)
                auto = mode == "bf16 autocast"
                with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=auto):
                    out = conv(x)
                    macs = conv_macs(conv, x, out)
                    del out

                    def fwd(conv=conv, x=x):
                        conv(x)
                        sync(device)

                    best, ts = best_time(fwd, repeats)
                rows.append({"what": f"{label}, forward", "precision": prec, "mode": mode, "macs": macs,
                             "best_s": best, "times_s": ts, "gflops": 2 * macs / best / 1e9,
                             "cpu_share": CPU_SHARE[0]})
                show(rows[-1])
                if label.startswith("3D conv 2x32") and mode != "bf16 native":
                    xg = x.detach().clone().requires_grad_(True)

                    def fwd_bwd(conv=conv, xg=xg, auto=auto):
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=auto):
                            y = conv(xg)
                        y.backward(torch.ones_like(y))
                        conv.zero_grad(set_to_none=True)
                        xg.grad = None
                        sync(device)

                    best, ts = best_time(fwd_bwd, max(1, repeats // 2))
                    rows.append({"what": f"{label}, forward + backward", "precision": prec, "mode": mode,
                                 "macs": 3 * macs, "best_s": best, "times_s": ts, "gflops": 6 * macs / best / 1e9,
                                 "cpu_share": CPU_SHARE[0]})
                    show(rows[-1])
                del conv, x
    return rows


def show(r: dict) -> None:
    print(f"  {r['what']:<52} {r['mode']:<14} {r['gflops']:8.1f} GFLOP/s ({r['best_s']:.3f} s, "
          f"CPU share {r['cpu_share']:.2f})", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- segpipe
def prepare_workspace(ws: Path, workers: int) -> list[str]:
    """The example data onboarded, fingerprinted, planned and preprocessed (3d_fullres) by segpipe's CLI."""
    bin_dir = Path(sys.executable).parent
    sp = [str(bin_dir / "segpipe")] if (bin_dir / "segpipe").exists() else [sys.executable, "-m", "segpipe"]
    cmds = [sp + ["onboard", str(EXAMPLE), "--name", NAME, "--workspace", str(ws), "--workers", str(workers)],
            sp + ["fingerprint", "--workspace", str(ws), "--name", NAME, "--workers", str(workers)],
            sp + ["plan", "--workspace", str(ws), "--name", NAME],
            sp + ["preprocess", "--workspace", str(ws), "--name", NAME, "--config", CONFIG, "--workers", str(workers)]]
    for c in cmds:
        r = subprocess.run(c, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"failed: {' '.join(c)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return [" ".join(c) for c in cmds]


def segpipe_rates(ws_root: Path, device: torch.device, precisions: list[str], iterations: int,
                  inference_passes: int) -> tuple[dict, list[dict]]:
    from segpipe.dataset.store import load_dataset
    from segpipe.inference.sliding_window import predict_sliding_window
    from segpipe.networks import build_network
    from segpipe.planning.plans import load_plans
    from segpipe.preprocessing.store import load_case
    from segpipe.training.data import CaseStore, make_batch
    from segpipe.training.splits import fold_cases
    from segpipe.training.trainer import TrainSettings, get_trainer
    from segpipe.workspace import Workspace

    ws = Workspace(ws_root, NAME)
    spec = load_dataset(ws)
    cfg = load_plans(ws).configuration(CONFIG)
    pre = ws.preprocessed(cfg.data_identifier)
    ids = [c.id for c in spec.cases]
    train_ids, val_ids = fold_cases(ws, "0", ids)
    plan = {"patch_size": list(cfg.patch_size), "batch_size": cfg.batch_size, "spacing": list(cfg.spacing),
            "network": cfg.network.name, "features_per_stage": list(cfg.network.topology.features_per_stage),
            "trainer": cfg.trainer, "n_cases": len(ids), "n_classes": spec.n_classes}
    rows = []
    for prec in precisions:
        # (a) training iteration
        settings = TrainSettings(device=device.type, precision=prec, workers=0, epochs=1, iterations_per_epoch=1)
        t = get_trainer(cfg.trainer)(cfg, spec.n_channels, spec.n_classes, pre, train_ids, val_ids,
                                     ws_root / "peak_conv_trainer", settings)  # (nothing is written there)
        store = CaseStore(pre, train_ids)
        batches = [make_batch(store, i, 0, t.batch_size, t.patch, augment=True) for i in range(iterations + 2)]
        counter = MacCounter(t.network)
        t.network.train()
        with torch.no_grad(), torch.autocast(device.type, dtype=t.amp_dtype, enabled=t.amp):
            t.network(torch.as_tensor(batches[0]["data"]).to(device))
        fwd_macs = counter.macs
        counter.remove()
        state = iter(batches)
        best, ts = best_time(lambda state=state, t=t: t.train_step(next(state), 1e-3), iterations, warmup=2)
        flops = 3 * 2 * fwd_macs
        rows.append({"what": f"training iteration, batch {t.batch_size}", "precision": prec, "macs_forward": fwd_macs,
                     "flops": flops, "best_s": best, "median_s": statistics.median(ts), "times_s": ts,
                     "gflops": flops / best / 1e9, "cpu_share": CPU_SHARE[0]})
        print(f"  {rows[-1]['what']:<52} {prec:<14} {rows[-1]['gflops']:8.1f} GFLOP/s "
              f"({best:.3f} s/iteration, CPU share {CPU_SHARE[0]:.2f})", flush=True)
        del t, batches

        # (b) sliding-window inference, forward only
        torch.manual_seed(0)
        net = build_network(cfg.network, spec.n_channels, spec.n_classes, deep_supervision=False).to(device).eval()
        data = [load_case(pre, c)[0] for c in ids]  # (c, z, y, x) float32, as predict hands them over
        amp_dtype = torch.bfloat16 if prec == "bf16" else None

        def infer(net=net, data=data, amp_dtype=amp_dtype):
            for d in data:
                predict_sliding_window(net, d, list(cfg.patch_size), spec.n_classes, mirror_axes=None,
                                       batch_size=cfg.batch_size, device=device, amp=amp_dtype is not None,
                                       amp_dtype=amp_dtype)
            sync(device)

        counter = MacCounter(net)
        infer()
        macs, calls = counter.macs, counter.calls
        counter.remove()
        best, ts = best_time(infer, inference_passes, warmup=0)
        rows.append({"what": f"sliding-window inference, {len(ids)} cases", "precision": prec, "macs": macs,
                     "network_calls": calls, "flops": 2 * macs, "best_s": best, "median_s": statistics.median(ts),
                     "times_s": ts, "gflops": 2 * macs / best / 1e9, "cpu_share": CPU_SHARE[0],
                     "case_shapes": [list(d.shape) for d in data]})
        print(f"  {rows[-1]['what']:<52} {prec:<14} {rows[-1]['gflops']:8.1f} GFLOP/s "
              f"({best / len(ids):.3f} s/case, {calls} network calls, CPU share {CPU_SHARE[0]:.2f})", flush=True)
        del net
    return plan, rows


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each peak convolution (best reported)")
    ap.add_argument("--iterations", type=int, default=5, help="timed training iterations (after 2 warm-up)")
    ap.add_argument("--inference-passes", type=int, default=3, help="timed passes over the example cases")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--workspace", type=Path, help="segpipe workspace to use (default: a temporary one, removed)")
    ap.add_argument("--workers", type=int, default=2, help="processes for onboard/fingerprint/preprocess")
    ap.add_argument("--skip-segpipe", action="store_true", help="only the peak convolutions")
    ap.add_argument("--no-peak-again", dest="peak_again", action="store_false",
                    help="measure the peak convolutions only before segpipe (default: also after, best counts)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "peak_conv.json")
    ap.add_argument("--markdown", type=Path, default=HERE / "results" / "peak_conv.md")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    started = time.time()
    load0 = list(os.getloadavg())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, {isa}, device {device}")
    print("peak convolutions:")
    peak_rows = peak_convs(device, a.repeats, a.precisions)
    res: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu, "isa": isa,
                 "device": str(device), "loadavg_start": load0}
    if not a.skip_segpipe:
        tmp = None
        ws = a.workspace
        if ws is None:
            tmp = Path(tempfile.mkdtemp(prefix="segpipe_peak_conv_"))
            ws = tmp / "ws"
        try:
            if not (ws / NAME / "preprocessed").is_dir():
                print(f"segpipe: onboard, fingerprint, plan, preprocess {CONFIG} of {EXAMPLE} into {ws}")
                res["segpipe_commands"] = prepare_workspace(ws, a.workers)
            print("segpipe:")
            plan, rows = segpipe_rates(ws, device, a.precisions, a.iterations, a.inference_passes)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        res.update(plan=plan, segpipe_rows=rows)
        if a.peak_again:
            print("peak convolutions again (the best of both rounds counts):")
            for r, r2 in zip(peak_rows, peak_convs(device, a.repeats, a.precisions)):
                r["rounds_gflops"] = [r["gflops"], r2["gflops"]]
                if r2["gflops"] > r["gflops"]:
                    r.update({k: r2[k] for k in ("best_s", "times_s", "gflops", "cpu_share")})
    peak = {p: max(r["gflops"] for r in peak_rows if r["precision"] == p) for p in a.precisions}
    res.update(peak_rows=peak_rows, peak_gflops=peak)
    for r in res.get("segpipe_rows", []):
        r["fraction_of_peak"] = r["gflops"] / peak[r["precision"]]
    res["loadavg_end"] = list(os.getloadavg())
    res["wall_s"] = time.time() - started
    md = report(res)
    print()
    print(md)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2))
    a.markdown.write_text(md + "\n")
    print(f"\nwrote {a.json}, {a.markdown} ({res['wall_s'] / 60:.1f} min)")


def report(res: dict) -> str:
    la0 = ", ".join(f"{x:.2f}" for x in res["loadavg_start"])
    la1 = ", ".join(f"{x:.2f}" for x in res["loadavg_end"])
    lines = [f"torch {res['torch']}, {res['threads']} threads, {res['cpu']} ({', '.join(res['isa'])}), "
             f"device {res['device']}; load average at start {la0}, at end {la1}", "",
             "| measurement | precision | GFLOP | best time (s) | GFLOP/s | fraction of peak | CPU share |",
             "|---|---|---|---|---|---|---|"]
    for r in res["peak_rows"]:
        frac = r["gflops"] / res["peak_gflops"][r["precision"]]
        lines.append(f"| {r['what']} | {r['mode']} | {2 * r['macs'] / 1e9:.1f} | {r['best_s']:.3f} | "
                     f"{r['gflops']:.1f} | {frac:.2f} | {r['cpu_share']:.2f} |")
    for r in res.get("segpipe_rows", []):
        lines.append(f"| segpipe {r['what']} | {r['precision']}{' (autocast)' if r['precision'] == 'bf16' else ''} | "
                     f"{r['flops'] / 1e9:.1f} | {r['best_s']:.3f} | {r['gflops']:.1f} | "
                     f"**{r['fraction_of_peak']:.2f}** | {r['cpu_share']:.2f} |")
    if "plan" in res:
        p = res["plan"]
        lines += ["", f"segpipe plan {CONFIG} of the example data ({p['n_cases']} cases): patch {p['patch_size']}, "
                      f"batch {p['batch_size']}, {p['network']} network {p['features_per_stage']}, trainer "
                      f"'{p['trainer']}'. Training FLOPs = 3 x 2 x forward convolution MACs; inference FLOPs = 2 x "
                      "convolution MACs of the windows' forward passes (no mirroring). The peak of a precision is its "
                      "best convolution row. CPU share = process CPU time / (wall time x torch threads) over the "
                      "timed calls: well below 1 means other processes took cores and the times are not usable."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
