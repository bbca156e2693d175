"""A/B of the pre-training mask strategy: random vs attention-guided masking, the same runs otherwise.

For each setting and seed, one full run of `python -m stvit.train` per arm on the built-in synthetic set (one
process each, `--quiet`), identical but for the mask flags: the same split, the same initial weights, the same data
order and the same uniform draws (the guided noise is built from them). Arms: `random`; `attention` (the
defaults: guide ratio 0.5, temperature 1); `attention-T0.1` (temperature 0.1: the guided half follows the
attention closely). Each run selects its fine-tune epoch on
its validation split and evaluates the test split once; the linear baseline of the same split is read from
metrics.json when the run writes one. Settings:

- `demo`: preset demo as it is (`python -m stvit.train` on a CPU);
- `longer`: preset demo with four pre-training epochs instead of one (the masking acts four times as long), the
  rest as demo.

Runs already finished are read, not rerun (an interrupted A/B continues; a run with last.pt and no metrics.json
is resumed). The report (Markdown) gives the per-seed numbers, the mean and range per arm, and the paired
difference to random per seed, and how far each attention run's guided masks were from random ones.

    OMP_NUM_THREADS=1 nice -n 10 python bench/studies/2026-11-29-cpu-ab-masking/ab_masking.py \
        --runs runs/ab-masking \
        --report bench/studies/2026-11-29-cpu-ab-masking/README.md

(One thread per run: on a 2-core machine shared with other jobs, torch's two-thread pool spent most of its time
waiting, `bench/studies/2026-11-29-cpu-ab-masking/mask_scores_cost.py`; both arms run alike either way.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ARMS = {  # name -> the flags that make it
    "random": ["--mask-strategy", "random"],
    "attention": ["--mask-strategy", "attention"],
    "attention-T0.1": ["--mask-strategy", "attention", "--mask-temperature", "0.1"],
}
SETTINGS = {
    "demo": {},
    "longer": {"pretrain": {"epochs": 4}},
    "smoke": {"finetune": {"epochs": 1}, "data": {"max_train": 48, "max_test": 16}},  # checks the driver in a minute
}
DEFAULT_SETTINGS = ["demo", "longer"]


def run_dir(runs: Path, setting: str, seed: int, arm: str) -> Path:
    return runs / setting / f"seed{seed}-{arm}"


def train(out: Path, setting: str, seed: int, arm: str) -> dict:
    """One run (or its continuation); returns its wall seconds and load averages around it."""
    if (out / "metrics.json").exists():
        return json.loads((out / "ab.json").read_text()) if (out / "ab.json").exists() else {}
    if (out / "checkpoints" / "last.pt").exists():
        cmd = ["--resume", str(out)]
    else:
        cfg = out.parent / f"{setting}.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps(SETTINGS[setting]))
        cmd = ["--preset", "demo", "--device", "cpu", "--config", str(cfg), "--seed", str(seed),
               *ARMS[arm], "--out", str(out)]
    load0, t0 = os.getloadavg(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stvit.train", *cmd, "--quiet"], cwd=ROOT, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"run {out} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    info = {"wall_s": time.perf_counter() - t0, "load_before": load0, "load_after": os.getloadavg(),
            "command": "python -m stvit.train " + " ".join(cmd) + " --quiet", "stdout": proc.stdout[-600:]}
    (out / "ab.json").write_text(json.dumps(info, indent=1))
    return info


def read_run(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    pre = [r for r in log if r["stage"] == "pretrain"]
    base = m.get("baseline") or {}
    base_test = base.get("test", base)
    return {"acc": m["test"]["accuracy"], "auc": m["test"]["roc_auc"], "val": m["val"]["accuracy"],
            "best_epoch": m["best_epoch"], "pretrain_loss": pre[-1]["loss"] if pre else None,
            "train_s": sum(r.get("seconds", 0.0) for r in log),
            "baseline": base_test.get("accuracy") if isinstance(base_test, dict) else None}


def guidance(out: Path, draws: int = 200) -> dict:
    """How far the guided masks of a finished attention run are from random ones: with its pre-trained encoder,
    16 volumes of the synthetic generator, and `draws` masks per slice, the removal rate of each slice's most and
    least attended patch (random masking: every patch at the mask ratio), and the spread of the scores."""
    import torch

    from kernels.reference import random_masking
    from stvit.data import make_synthetic
    from stvit.model.masking import guided_count, guided_noise, patch_scores
    from stvit.model.precision import Precision
    from stvit.training.rundir import load_model

    trained = load_model(out / "checkpoints" / "pretrain.pt", stage="pretrain")
    cfg, model = trained.cfg, trained.model
    x = torch.from_numpy(make_synthetic(16, 1, 0).X_train)
    scores = patch_scores(model.encoder, x.reshape(-1, *x.shape[-2:]), Precision.resolve("fp32", torch.device("cpu")))
    S, P = scores.shape
    g = guided_count(cfg.pretrain.mask_guide_ratio, P - cfg.model.len_keep)
    u = torch.rand(draws, S, P, generator=torch.Generator().manual_seed(0)).reshape(-1, P)
    noise = guided_noise(u, scores.repeat(draws, 1), g, cfg.pretrain.mask_temperature)
    removed = random_masking(noise, cfg.model.mask_ratio)[2].reshape(draws, S, P).mean(0)  # (S, P) removal rate
    rows = torch.arange(S)
    ratio = scores.max(1).values / scores.min(1).values
    return {"random_rate": 1 - cfg.model.len_keep / P, "top_rate": removed[rows, scores.argmax(1)].mean().item(),
            "bottom_rate": removed[rows, scores.argmin(1)].mean().item(), "max_over_min_median": ratio.median().item()}


def paired_test(a: Path, b: Path) -> tuple[int, int, float]:
    """Test volumes that only run `a` classified right, only `b` did, and the exact McNemar p-value (two-sided
    binomial test of the discordant pairs): the two runs are scored on the same volumes."""
    import numpy as np
    from scipy.stats import binomtest

    pa, pb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    assert np.array_equal(pa["test_labels"], pb["test_labels"])
    ra, rb = (p["test_probs"].argmax(1) == p["test_labels"] for p in (pa, pb))
    only_a, only_b = int((ra & ~rb).sum()), int((rb & ~ra).sum())
    return only_a, only_b, binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} [{min(xs):.3f}, {max(xs):.3f}]"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(runs: Path, settings: list[str], seeds: list[int], infos: dict, started: str, commit: str,
           command: str) -> str:
    lines = ["# CPU: A/B of the pre-training mask strategy (random vs attention-guided), built-in synthetic set", "",
             f"- Date: {started} (UTC start) to {dt.datetime.utcnow():%Y-%m-%d %H:%M} (UTC end); commit {commit}",
             f"- Machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; shared with other jobs (load "
             "averages per run below); every run under `nice -n 10`",
             f"- Software: Python {platform.python_version()}, " + torch_version()
             + f" (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
             f"- Command: `nice -n 10 {command}`",
             "- Each run: `python -m stvit.train --preset demo --device cpu --config <setting>.json --seed S "
             "<arm's flags> --out <dir> --quiet`; arms: " + "; ".join(f"{k}: `{' '.join(v)}`" for k, v in ARMS.items())
             + " (guide ratio 0.5, the default, in both attention arms)", ""]
    for setting in settings:
        rows = {(s, k): read_run(run_dir(runs, setting, s, k)) for s in seeds for k in ARMS}
        lines += [f"## Setting `{setting}`: config {json.dumps(SETTINGS[setting])} over preset demo", "",
                  "| seed | arm | test acc | ROC-AUC | val acc | best epoch | last pretrain loss | baseline acc | "
                  "wall s | load avg (1 min) before/after |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in seeds:
            for k in ARMS:
                r, info = rows[s, k], infos.get((setting, s, k), {})
                load = info.get("load_before"), info.get("load_after")
                lines.append(f"| {s} | {k} | {r['acc']:.3f} | {r['auc']:.3f} | {r['val']:.3f} | {r['best_epoch']} | "
                             f"{r['pretrain_loss']:.4f} | {fmt(r['baseline'])} | {fmt(info.get('wall_s'), '.0f')} | "
                             f"{fmt(load[0] and load[0][0], '.1f')} / {fmt(load[1] and load[1][0], '.1f')} |")
        lines += ["", "| arm | test acc mean [min, max] | ROC-AUC mean [min, max] | test acc - random, per seed "
                  "| mean | per seed: right only here / only with random (McNemar p) |", "|---|---|---|---|---|---|"]
        for k in ARMS:
            diff = [rows[s, k]['acc'] - rows[s, 'random']['acc'] for s in seeds]
            tests = [paired_test(run_dir(runs, setting, s, k), run_dir(runs, setting, s, "random")) for s in seeds]
            lines.append(f"| {k} | {spread([rows[s, k]['acc'] for s in seeds])} | "
                         f"{spread([rows[s, k]['auc'] for s in seeds])} | {', '.join(f'{d:+.3f}' for d in diff)} | "
                         f"{statistics.mean(diff):+.3f} | " + ("" if k == "random" else ", ".join(
                             f"{a} / {b} ({p:.2f})" for a, b, p in tests)) + " |")
        gd = {(s, k): guidance(run_dir(runs, setting, s, k)) for s in seeds for k in ARMS if k != "random"}
        lines += ["", "How far the guided masks were from random ones, with each attention run's pre-trained encoder "
                  "(16 synthetic volumes, 200 masks per slice): removal rate of each slice's most / least attended "
                  f"patch, mean over slices, against {next(iter(gd.values()))['random_rate']:.3f} for every patch "
                  "under random masking; median over slices of max score / min score:", "",
                  "| seed | arm | most attended removed | least attended removed | score max/min |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s} | {k} | {d['top_rate']:.3f} | {d['bottom_rate']:.3f} | {d['max_over_min_median']:.2f} |"
                  for (s, k), d in gd.items()]
        base = [rows[s, 'random']['baseline'] for s in seeds]
        lines.append("")
        if all(b is not None for b in base):
            lines.append(f"Linear baseline of the same splits: {spread(base)}.")
        lines.append("")
    return "\n".join(lines)


def fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def torch_version() -> str:
    import torch

    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/ab-masking", help="folder of the run directories (continued if there)")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--report", help="write the Markdown report here (default: print it)")
    args = ap.parse_args(argv)
    runs = Path(args.runs).absolute()
    started = f"{dt.datetime.utcnow():%Y-%m-%d %H:%M}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    infos = {}
    for setting in args.settings:
        for seed in args.seeds:
            for arm in ARMS:
                out = run_dir(runs, setting, seed, arm)
                infos[setting, seed, arm] = train(out, setting, seed, arm)
                r = read_run(out)
                print(f"{setting} seed {seed} {arm}: test acc {r['acc']:.3f}, ROC-AUC {r['auc']:.3f}, "
                      f"baseline {fmt(r['baseline'])}, {fmt(infos[setting, seed, arm].get('wall_s'), '.0f')} s",
                      flush=True)
    command = ("python bench/studies/2026-11-29-cpu-ab-masking/ab_masking.py "
               + " ".join(sys.argv[1:] if argv is None else argv))
    text = report(runs, args.settings, args.seeds, infos, started, commit, command)
    if args.report:
        Path(args.report).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
