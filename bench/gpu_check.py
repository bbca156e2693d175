"""The measuring parts of `bench/gpu_check.sh`: `ceilings`, `kernels`, `epochs` and `summary`, each writing into OUT.

    python bench/gpu_check.py ceilings OUT [--dry]   # device copy GB/s, host->device GB/s, GEMM TFLOP/s
    python bench/gpu_check.py kernels OUT [--dry]    # the kernels' self-check at each precision, and the kernel
                                                     # report (every plan for sm75/80/89/90 and for this GPU
                                                     # through its driver) -> OUT/kernels.json
    python bench/gpu_check.py epochs OUT [--dry]     # one pretrain + one finetune epoch of 3200 volumes, baseline
                                                     # and fast path -> OUT/epochs.json
    python bench/gpu_check.py summary OUT --status F --profile-json F   # OUT/summary.md from what the
                                                     # sections left

Only torch, triton, numpy and the project are imported (no matplotlib, tqdm or scikit-learn needed). `--dry` shrinks
everything so that the script can be tried on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

# Goals the report is read against (issue 7): fused+compiled >= 6x the seed-style baseline; an epoch of 3200
# volumes within 2x of the traffic floor on an H100 SXM (pretrain ~0.8 s, finetune ~1.2 s).
GOAL_SPEEDUP = 6.0
FLOOR_S = {"pretrain": 0.8, "finetune": 1.2}
N_FULL = 3200
UNIQUE = 400  # distinct synthetic volumes in the full-scale set


def _timed(fn, iters: int, cuda: bool) -> float:
    """Seconds per call of `fn` (CUDA events on a GPU), after two warm-up calls."""
    for _ in range(2):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def ceilings(out: Path, dry: bool) -> dict:
    """What the device can do at best: a device-to-device copy (read + write bytes), a pinned host-to-device
    copy, and a square GEMM in bf16 (fp32 on a CPU)."""
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    n_copy = (1 << 24) if dry else (1 << 28)  # fp32 elements: 64 MiB dry, 1 GiB otherwise
    x = torch.empty(n_copy, device=dev)
    y = torch.empty_like(x)
    t = _timed(lambda: y.copy_(x), 5 if dry else 20, cuda)
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "copy_bytes": 2 * x.numel() * 4,
           "d2d_copy_gbps": 2 * x.numel() * 4 / t / 1e9}
    del x, y
    h = torch.empty(n_copy // 4, pin_memory=cuda)
    d = torch.empty(n_copy // 4, device=dev)
    t = _timed(lambda: d.copy_(h, non_blocking=cuda), 5 if dry else 10, cuda)
    res["h2d_copy_gbps"] = h.numel() * 4 / t / 1e9
    del h, d
    n = 1024 if dry else 8192
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t = _timed(lambda: a @ b, 3 if dry else 20, cuda)
    res.update(gemm_n=n, gemm_dtype=str(dtype).replace("torch.", ""), gemm_tflops=2 * n ** 3 / t / 1e12)
    (out / "ceilings.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


def epochs(out: Path, dry: bool) -> list[dict]:
    """One pretrain epoch and one finetune epoch on a synthetic set of the real size, baseline and fast path."""
    from stvit.config import preset
    from stvit.data import make_synthetic
    from stvit.perf.profiler import VARIANTS, Variant, time_epochs
    from stvit.perf.report import environment

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    if dry:  # a tiny model, a few volumes, and no compile (it takes minutes on a CPU)
        cfg = preset("demo").override({"model": {"dim": 32, "depth": 1, "heads": 2, "temporal_depth": 1,
                                                  "temporal_heads": 2, "decoder_dim": 32, "decoder_depth": 1},
                                       "train": {"batch_size": 2}})
        n, variants = 8, ("baseline", Variant("fused", False, "device", True))
    else:
        cfg, n, variants = preset("paper"), N_FULL, ("baseline", VARIANTS["fused+compile"])
    cfg = cfg.override({"train": {"device": dev.type}})
    t = time.perf_counter()
    # Generating 3200 volumes takes minutes of one CPU core; throughput does not depend on the values, so UNIQUE
    # volumes are generated and repeated to the real size (a full copy in host memory, as a loaded file would be).
    unique = min(n, UNIQUE)
    data = make_synthetic(unique, 1, 0)  # the test split is not used: one volume
    reps = -(-n // unique)
    X, y = np.tile(data.X_train, (reps, 1, 1, 1))[:n], np.tile(data.y_train, reps)[:n]
    gen_s = time.perf_counter() - t
    print(f"synthetic set of {n} volumes ({unique} distinct) in {gen_s:.1f} s", flush=True)
    torch.manual_seed(0)
    rows = time_epochs(cfg, X, y, dev, variants=variants, warmup=1 if dry else 3)
    res = {"env": environment(dev), "preset": cfg.preset, "n_train": n, "distinct_volumes": unique,
           "batch_size": cfg.train.batch_size, "synth_seconds": gen_s, "dry": dry, "rows": rows}
    (out / "epochs.json").write_text(json.dumps(res, indent=2, default=str))
    for r in rows:
        print(f"{r['stage']:<9}{r['variant']:<32}{r['epoch_seconds']:8.2f} s {r['samples_per_s']:9.1f} samples/s "
              f"{r['tflops']:7.2f} TFLOP/s", flush=True)
    return rows


def kernels_check(out: Path, dry: bool) -> dict:
    """`kernels.select`'s self-check of every op at fp32, bf16 and fp16 (on a CPU, in Triton's interpreter: the
    dry run sets TRITON_INTERPRET=1), then bench/kernel_report.py in a child process (it compiles, so it needs
    triton without the interpreter): every launch plan for the four targets and, on a GPU, for this GPU through
    its driver. Both go to OUT/kernels.json."""
    import subprocess
    import tempfile

    from kernels.select import select

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    checks = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        sel = select("auto", device, dtype, check=True)
        checks.append(sel.to_json())
        print(f"self-check {sel.dtype}: fused {', '.join(sel.fused) or 'none'} ({sel.check_seconds:.2f} s)", flush=True)
    res = {"selfcheck": checks}
    args = ["--presets", "paper", "--precisions", "bf16", "--cc", "90"] if dry else ["--device", "--jobs", "8"]
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("kernel_report.py")), "--out", d, *args],
                              env=env, capture_output=True, text=True)
        print(proc.stdout + proc.stderr[-3000:], flush=True)
        report = _load(Path(d) / "kernel_resources.json")
    res["report"] = report if report else {"error": f"kernel_report.py exited {proc.returncode}"}
    (out / "kernels.json").write_text(json.dumps(res, indent=1))
    return res


def _kernels_summary(k: dict | None) -> list[str]:
    lines = ["", "## Kernels (`kernels.select` self-check, bench/kernel_report.py)", ""]
    if not k:
        return lines + ["not run (see the section status)"]
    lines += ["| dtype | fused | fell back (reason) | check s |", "|---|---|---|---:|"]
    for c in k["selfcheck"]:
        fused = [op for op, r in c["ops"].items() if r["fused"]]
        back = "; ".join(f"{op}: {r['reason']}" for op, r in c["ops"].items() if not r["fused"])
        lines.append(f"| {c['dtype']} | {', '.join(fused) or 'none'} | {back or '-'} | {c['check_seconds']:.2f} |")
    rep = k["report"]
    if "records" not in rep:
        return lines + ["", f"kernel report: {rep.get('error', 'missing')}"]
    recs = rep["records"]
    failed = sorted({f"{r['id']} sm{r['cc']}" for r in recs if not r["ok"]})
    spills = sorted({f"{r['id']} sm{r['cc']}" for r in recs if r["ok"] and (r["stack"] or r["local"])})
    lines += ["", f"Cross-compiled (triton {rep['meta']['versions']['triton']}): {len(recs)} launch x target records, "
              f"{len(failed)} failed to compile{': ' + ', '.join(failed[:8]) if failed else ''}, {len(spills)} with "
              f"spills{': ' + ', '.join(spills[:8]) if spills else ''}."]
    paper = [r for r in recs if r["ok"] and r["preset"] == "paper" and r["cc"] in (80, 90)]
    if paper:
        low = min(paper, key=lambda r: r["occupancy"])
        lines.append(f"Lowest theoretical occupancy at the paper plans on sm80/sm90: {low['occupancy']:.0%} "
                     f"({low['id']}, sm{low['cc']}, {low['registers']} registers).")
    dev = rep.get("device") or []
    if dev:
        cross = {(r["id"], r["cc"]): r for r in recs if r["ok"]}
        same = [d for d in dev if (d["id"], d["cc"]) in cross]
        differ = [d["id"] for d in same if cross[(d["id"], d["cc"])]["registers"] != d["registers"]]
        lines.append(f"On this GPU ({dev[0]['device']}, sm{dev[0]['cc']}) through the driver: {len(dev)} plans, most "
                     f"registers {max(d['registers'] for d in dev)}, {sum(d['spills'] > 0 for d in dev)} with spills; "
                     f"registers equal to the cross-compiled sm{dev[0]['cc']} ones for {len(same) - len(differ)} of "
                     f"{len(same)}{' (differ: ' + ', '.join(differ[:6]) + ')' if differ else ''}.")
    return lines


# --- summary -------------------------------------------------------------------------------------------------

def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(out: Path, status_file: Path | None, profile_json: Path | None) -> str:
    from stvit.perf.report import fmt as _f
    from stvit.perf.report import vs_baseline

    lines = ["# GPU check", ""]
    rows = []
    if status_file and status_file.exists():
        rows = [json.loads(line) for line in status_file.read_text().splitlines() if line.strip()]
    meta = next((r["meta"] for r in rows if "meta" in r), {})
    status = {"sections": [r for r in rows if "name" in r]}
    lines += [f"- date: {meta.get('date', 'n/a')}", f"- command: `{meta.get('command', 'bash bench/gpu_check.sh')}`",
              f"- commit: {meta.get('commit', 'n/a')}", f"- device: {meta.get('device', 'n/a')}",
              f"- software: {meta.get('software', 'n/a')}"]
    if meta.get("dry"):
        lines.append("- **dry run** (STVIT_GPU_CHECK_DRY=1): shrunken shapes; numbers are a harness check only")
    if meta.get("notes"):
        lines += [f"- note: {n}" for n in meta["notes"]]
    lines += ["", "## Sections", "", "| section | status | seconds | limit s |", "|---|---|---:|---:|"]
    for s in status.get("sections", []):
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit']} |")

    tests = out / "tests.log"
    if tests.exists():
        tail = [ln for ln in tests.read_text(errors="replace").splitlines() if ln.strip()]
        result = next((ln.strip("= ") for ln in reversed(tail) if " passed" in ln or " failed" in ln
                       or " error" in ln), "no pytest result line (see tests.log)")
        lines += ["", f"Tests ({'dry: CPU' if meta.get('dry') else 'CUDA'}): {result}"]

    c = _load(out / "ceilings.json")
    lines += ["", "## Ceilings", ""]
    if c:
        lines += [f"- device-to-device copy: {c['d2d_copy_gbps']:.0f} GB/s (read + write of "
                  f"{c['copy_bytes'] / 2 ** 30:.2f} GiB)", f"- pinned host-to-device copy: {c['h2d_copy_gbps']:.1f} GB/s",
                  f"- {c['gemm_dtype']} GEMM {c['gemm_n']}^3: {c['gemm_tflops']:.3g} TFLOP/s"]
    else:
        lines.append("not measured (see the section status)")

    b = _load(out / "bench.json")
    lines += ["", "## Train steps (`pytest bench --benchmark`)", ""]
    if b and b.get("train_steps"):
        lines += ["| stage | variant | step ms | samples/s | x baseline | tokens/s | TFLOP/s | peak GB | compile s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in b["train_steps"]:
            lines.append(f"| {r['stage']} | {r['variant']} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | "
                         f"{_f(r.get('vs_baseline'))} | {r['tokens_per_s']:.3g} | {r['tflops']:.2f} | "
                         f"{_f(r['peak_memory_gb'])} | {_f(r['compile_seconds'], '.1f')} |")
        lines.append(f"\n{b['train_steps'][0]['shape']}, precision {b['train_steps'][0]['precision']}.")
    else:
        lines.append("no train-step results (see bench.log)")
    if b and b.get("ops"):
        lines += ["", "### Ops, full (forward + backward), GB/s of an ideal single pass", "",
                  "| op | reference | fused | compiled | fused ms |", "|---|---:|---:|---:|---:|"]
        ops = {}
        for r in b["ops"]:
            if r["phase"] == "full":
                ops.setdefault(r["op"], {})[r["impl"]] = r
        for op, impls in ops.items():
            g = {k: impls[k]["gbps"] if k in impls else None for k in ("reference", "fused", "compiled")}
            lines.append(f"| {op} | {_f(g['reference'], '.0f')} | {_f(g['fused'], '.0f')} | "
                         f"{_f(g['compiled'], '.0f')} | {_f(impls.get('fused', {}).get('median_ms'), '.3f')} |")

    p = _load(profile_json) if profile_json else None
    lines += ["", "## Profile (`python -m stvit.profile`)", ""]
    if p:
        nv = p["nvml"]
        util = (f"GPU utilization {nv['summary'].get('gpu_util_mean', float('nan')):.0f}% mean, power "
                f"{nv['summary'].get('power_w_mean', float('nan')):.0f} W, SM clock "
                f"{nv['summary'].get('sm_clock_mhz_mean', float('nan')):.0f} MHz" if nv["available"]
                else f"NVML not available: {nv['reason']}")
        lines += [f"`{p['command']}`: {p['steps']} steps, {p['samples_per_s']:.1f} samples/s, {p['tflops']:.2f} "
                  f"TFLOP/s, peak {_f(p['peak_memory_gb'])} GB; {util}. Top kernels in profile.md.", ""]
    else:
        lines.append("no profile (see the section status)")

    lines += _kernels_summary(_load(out / "kernels.json"))

    e = _load(out / "epochs.json")
    lines += ["", f"## Full-scale epochs ({N_FULL} volumes, batch 8)" if not (e or {}).get("dry")
              else "## Epochs (dry: tiny)", ""]
    if e and e.get("rows"):
        lines += ["| stage | variant | epoch s | samples/s | x baseline | TFLOP/s | GPU util % | goal |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in e["rows"]:
            ratio = vs_baseline(e["rows"], r)
            goal = ""
            if r["variant"] != "baseline" and not e.get("dry"):
                goal = (f"<= {2 * FLOOR_S[r['stage']]:.1f} s: {'met' if r['epoch_seconds'] <= 2 * FLOOR_S[r['stage']] else 'not met'}"
                        f"; >= {GOAL_SPEEDUP:.0f}x: {'met' if ratio and ratio >= GOAL_SPEEDUP else 'not met'}")
            lines.append(f"| {r['stage']} | {r['variant']} | {r['epoch_seconds']:.2f} | {r['samples_per_s']:.1f} | "
                         f"{_f(ratio)} | {r['tflops']:.2f} | {_f(r['nvml'].get('gpu_util_mean'), '.0f')} | {goal} |")
        lines.append(f"\n{e['n_train']} volumes ({e.get('distinct_volumes', e['n_train'])} distinct synthetic ones, "
                     f"repeated), built in {e['synth_seconds']:.0f} s, not timed. "
                     "Compile happens in the untimed warm-up steps (column compile s in epochs.json).")
    else:
        lines.append("no epoch timings (see the section status)")
    lines += ["", "## Goals", "", f"- fused+compiled train step >= {GOAL_SPEEDUP:.0f}x the seed-style baseline "
              "(samples/s, same GPU)", f"- pretrain epoch of {N_FULL} volumes <= 2x the traffic floor (~{FLOOR_S['pretrain']} s on an "
              f"H100 SXM), fine-tune epoch <= 2x ~{FLOOR_S['finetune']} s", ""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gpu_check.py")
    ap.add_argument("what", choices=("ceilings", "kernels", "epochs", "summary"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry", action="store_true")
    ap.add_argument("--status", type=Path, help="summary: the section status file gpu_check.sh kept")
    ap.add_argument("--profile-json", type=Path, help="summary: the profile's report.json")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "ceilings":
        ceilings(a.out, a.dry)
    elif a.what == "kernels":
        kernels_check(a.out, a.dry)
    elif a.what == "epochs":
        epochs(a.out, a.dry)
    else:
        print(summary(a.out, a.status, a.profile_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
