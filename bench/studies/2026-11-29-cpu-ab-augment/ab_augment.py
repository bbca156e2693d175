"""A/B of the training augmentations on the built-in synthetic set, preset demo, on the CPU: flips only (the
default) against flip + elastic + scale + noise at their default strengths, the same seeds for both arms.

    nice -n 10 python bench/studies/2026-11-29-cpu-ab-augment/ab_augment.py --out runs/ab-augment \
        --report bench/studies/2026-11-29-cpu-ab-augment/README.md

Each run is `python -m stvit.train --preset demo --device cpu --seed S [--augment ...]` in its own directory; a
run that already has metrics.json is read, not run again (the driver can be restarted). The report gives every
run, the mean and standard deviation per arm and the paired difference per seed, with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ARMS = {"flips only": [], "flip + elastic + scale + noise": ["--augment", "flip", "elastic", "scale", "noise"]}


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run(out: Path, seed: int, flags: list[str]) -> dict:
    """One training run (or the one already there); its metrics, speed and wall time."""
    record = out / "ab.json"
    if (out / "metrics.json").is_file() and record.is_file():
        return json.loads(record.read_text())
    if out.exists():
        raise SystemExit(f"{out} holds an unfinished run: remove it and start the driver again")
    before, t0 = load(), time.perf_counter()
    cmd = [sys.executable, "-m", "stvit.train", "--preset", "demo", "--device", "cpu", "--seed", str(seed),
           "--out", str(out), "--quiet"] + flags
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ft = [r for r in log if r["stage"] == "finetune"]
    result = {"seed": seed, "command": " ".join(cmd[1:]), "test_acc": m["test"]["accuracy"],
              "test_auc": m["test"]["roc_auc"], "val_acc": m["val"]["accuracy"], "best_epoch": m["best_epoch"],
              "train_loss": ft[-1]["train_loss"], "train_acc": ft[-1]["train_acc"],
              "samples_per_s": statistics.mean(r["samples_per_s"] for r in ft), "wall_s": wall,
              "load_before": before, "load_after": load(), "baseline": m.get("baseline")}
    record.write_text(json.dumps(result, indent=1) + "\n")
    return result


def mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def report(results: dict[str, list[dict]], seeds: list[int]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    import numpy
    import torch

    lines = ["# CPU: training augmentations, A/B on the built-in synthetic set (preset demo)", "",
             f"- Date: {time.strftime('%Y-%m-%d')}; commit {commit}",
             f"- Machine: {os.cpu_count()} CPU threads ({platform.processor() or platform.machine()}), no GPU; "
             "shared with other work: load averages (1/5/15 min) are given per run",
             f"- Software: Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
             "- Data: the built-in synthetic set (1,920 train / 320 test volumes, new subjects in test); "
             "validation = 10% of the train subjects; every run picks its epoch on validation and evaluates the "
             "test split once",
             "- Command: `nice -n 10 python bench/studies/2026-11-29-cpu-ab-augment/ab_augment.py` "
             f"(seeds {', '.join(map(str, seeds))}); each run is "
             "`python -m stvit.train --preset demo --device cpu --seed S --quiet [--augment flip elastic scale "
             "noise]`, default strengths (elastic 1.5 voxels every 8 voxels, scale ±10%, noise 0.1)", "",
             "| arm | seed | test acc | test ROC-AUC | val acc | best epoch | last train loss | last train acc | "
             "fine-tune samples/s | wall s | load before | load after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, rows in results.items():
        for r in rows:
            lines.append(f"| {arm} | {r['seed']} | {r['test_acc']:.3f} | {r['test_auc']:.3f} | {r['val_acc']:.3f} | "
                         f"{r['best_epoch']} | {r['train_loss']:.3f} | {r['train_acc']:.3f} | "
                         f"{r['samples_per_s']:.0f} | {r['wall_s']:.0f} | {r['load_before']} | {r['load_after']} |")
    lines += ["", "| arm | test acc (mean ± sd) | test ROC-AUC | val acc |", "|---|---|---|---|"]
    for arm, rows in results.items():
        lines.append(f"| {arm} | {mean_sd([r['test_acc'] for r in rows])} | "
                     f"{mean_sd([r['test_auc'] for r in rows])} | {mean_sd([r['val_acc'] for r in rows])} |")
    a, b = results.values()
    diff = [y["test_acc"] - x["test_acc"] for x, y in zip(a, b)]
    lines += ["", "Paired difference in test accuracy (augmented - flips only) per seed: "
              + ", ".join(f"{d:+.3f}" for d in diff) + f"; mean {statistics.mean(diff):+.3f}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/ab-augment", help="folder of the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--report", help="Markdown report to write (default: print it)")
    args = ap.parse_args()
    out = Path(args.out).absolute()
    results = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for i, (arm, flags) in enumerate(ARMS.items()):
            results[arm].append(run(out / f"{'ab'[i]}-seed{seed}", seed, flags))
            print(f"{arm}, seed {seed}: test accuracy {results[arm][-1]['test_acc']:.3f}", flush=True)
    text = report(results, args.seeds)
    if args.report:
        Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
