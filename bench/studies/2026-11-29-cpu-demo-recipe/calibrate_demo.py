"""Calibrate the `demo` recipe across data sizes: the built-in synthetic set at several training sizes and subject
counts, a few seeds each, every run through `stvit.train`'s own plan and stages (with its logistic-regression
baseline on the same split), one fixed test split of new subjects.

    nice -n 10 python bench/studies/2026-11-29-cpu-demo-recipe/calibrate_demo.py --out runs/calib
        [--sizes 240 480 960 1920 480x60] [--seeds 0 1 2] [-- stvit.train flags, e.g. --config recipe.json]

A size is `N` (the first N / 16 subjects of the synthetic training split, 16 volumes each) or `NxS` (N volumes
from S subjects: the first N / S / 2 volumes of each class of each of the first S subjects). The data is
`make_synthetic(--n-pool, --n-test, --data-seed)` generated once in memory (by default 1,920 / 320 / seed 0: the
set the default command caches), so every size is scored on the same test volumes. Writes OUT/runs.jsonl (one line per
run: accuracies, chosen C, epochs, wall seconds, load average) and prints the table of the report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from stvit import cli
from stvit.training import api
from stvit.data import HCPData, make_synthetic
from stvit.data.synth import VOLUMES_PER_SUBJECT


def parse_size(spec: str) -> tuple[int, int]:
    """'480' -> (480, 30); '480x60' -> (480, 60)."""
    n, _, s = spec.partition("x")
    n = int(n)
    return n, int(s) if s else n // VOLUMES_PER_SUBJECT


def subset(data: HCPData, n: int, subjects: int) -> HCPData:
    """n training volumes of the first `subjects` subjects, the same number of each class per subject."""
    per_class = n // subjects // 2
    subject = np.arange(len(data.y_train)) // VOLUMES_PER_SUBJECT
    rows = [np.flatnonzero((subject == s) & (data.y_train == c))[:per_class] for s in range(subjects) for c in (0, 1)]
    rows = np.sort(np.concatenate(rows))
    if len(rows) != n or per_class > VOLUMES_PER_SUBJECT // 2:
        raise SystemExit(f"cannot take {n} volumes from {subjects} subjects of {VOLUMES_PER_SUBJECT}")
    return HCPData(data.X_train[rows], data.y_train[rows], data.ids_train[rows], data.X_test, data.y_test,
                   data.ids_test, source=f"synthetic {n} volumes / {subjects} subjects")


def recipe(flags: list[str]) -> dict:
    """The config values and config file that train flags after `--` ask for (the flag table of `stvit.cli`)."""
    ap = argparse.ArgumentParser(prog="calibrate_demo.py --")
    cli.add_run_flags(ap, [], skip=("--out", "--resume", "--stage", "--preset", "--seed", "--device", "--data"))
    args = ap.parse_args(flags)
    return {"values": cli.config_values(args), "config_file": args.config}


def one_run(data: HCPData, out: Path, seed: int, flags: list[str]) -> dict:
    """One demo run of the run API on `data` with the recipe of `flags` (as `python -m stvit.train` runs it)."""
    r = recipe(flags)
    request = api.Request(preset="demo", values={**r["values"], "train.device": "cpu", "train.seed": seed},
                          config_file=r["config_file"], out=out, quiet=True)
    load = os.getloadavg()
    t0 = time.perf_counter()
    m = api.run(api.plan(request, data))
    seconds = time.perf_counter() - t0
    cfg = json.loads((out / "config.json").read_text())
    b = m["baseline"]
    return {"test_accuracy": m["test"]["accuracy"], "test_roc_auc": m["test"]["roc_auc"],
            "val_accuracy": m["val"]["accuracy"], "best_epoch": m["best_epoch"],
            "baseline_accuracy": b["accuracy"], "baseline_roc_auc": b["roc_auc"], "baseline_C": b["C"],
            "baseline_seconds": b["seconds"], "pretrain_epochs": cfg["pretrain"]["epochs"],
            "finetune_epochs": cfg["finetune"]["epochs"], "seconds": round(seconds, 1),
            "steps_per_epoch": len(json.loads((out / "split.json").read_text())["train"]) // cfg["train"]["batch_size"],
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()]}


def table(rows: list[dict]) -> str:
    """Markdown: per size, the model's accuracy over seeds (mean, range), the baseline's, the gap, wall time."""
    lines = ["| train volumes | subjects | steps/epoch | epochs (pretrain + finetune) | demo accuracy: mean (range) "
             "| demo ROC-AUC | baseline accuracy: mean (range) | gap (demo - baseline) | wall s: mean (range) "
             "| baseline s | load (1 min) |", "|---" * 11 + "|"]
    for key in dict.fromkeys((r["n_train"], r["subjects"]) for r in rows):
        g = [r for r in rows if (r["n_train"], r["subjects"]) == key]
        acc, base = (np.array([r[k] for r in g]) for k in ("test_accuracy", "baseline_accuracy"))
        sec = np.array([r["seconds"] for r in g])
        load = [r["load_before"][0] for r in g] + [r["load_after"][0] for r in g]
        lines.append(
            f"| {key[0]} | {key[1]} | {g[0]['steps_per_epoch']} | {g[0]['pretrain_epochs']} + "
            f"{g[0]['finetune_epochs']} | {acc.mean():.3f} ({acc.min():.3f}-{acc.max():.3f}) | "
            f"{np.mean([r['test_roc_auc'] for r in g]):.3f} | {base.mean():.3f} ({base.min():.3f}-{base.max():.3f}) | "
            f"{acc.mean() - base.mean():+.3f} | {sec.mean():.0f} ({sec.min():.0f}-{sec.max():.0f}) | "
            f"{np.mean([r['baseline_seconds'] for r in g]):.0f} | {min(load):.1f}-{max(load):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder of the run directories and runs.jsonl")
    ap.add_argument("--sizes", nargs="+", default=["240", "480", "960", "1920"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-test", type=int, default=320)
    ap.add_argument("--n-pool", type=int, default=1920, help="training volumes generated (the sizes are subsets)")
    ap.add_argument("--data-seed", type=int, default=0)
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [parse_size(s) for s in args.sizes]
    t0 = time.perf_counter()
    # the test split of make_synthetic depends on n_train (its subjects are numbered after the training ones):
    # one generated set of --n-pool training volumes keeps the test volumes the same at every size
    full = make_synthetic(max([args.n_pool] + [s * VOLUMES_PER_SUBJECT for _, s in sizes]), args.n_test,
                          args.data_seed)
    print(f"data: {time.perf_counter() - t0:.0f} s; train flags: {' '.join(flags) or '(none)'}", flush=True)
    rows = []
    for n, subjects in sizes:
        data = subset(full, n, subjects)
        for seed in args.seeds:
            run = out / f"n{n}-s{subjects}-seed{seed}"
            r = {"n_train": n, "subjects": subjects, "seed": seed, "flags": flags, **one_run(data, run, seed, flags)}
            rows.append(r)
            with open(out / "runs.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
