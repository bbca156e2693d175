"""A/B of the training-side per-voxel standardization (`--standardize`, stvit.data.standardize): off vs on, in
3-fold subject-grouped cross-validation (`python -m stvit.cv`) of the demo preset on the built-in synthetic set
generated at three sizes, beside the same-split logistic-regression baseline of every fold.

    python bench/studies/2026-12-02-standardize-ab/ab_standardize.py --work DIR [--sizes 240 480 1920]

Sizes are the training parts of the folds: the set is generated with `pool` = train + test volumes (whole
subjects of 16 volumes) so that two folds of three hold about that many volumes. Both arms of a size run on the
same file, with the same folds (seed 0) and the same seeds; only --standardize differs. Each cross-validation is
the real command in a subprocess; a finished one (cv.json) is read, an interrupted one is resumed. Writes
results.json beside this script (per size, arm and fold: model and baseline test accuracy; mean and sd over folds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
FOLDS, SEED = 3, 0
# training part of a fold -> the synthetic set's (n_train, n_test): 3 folds of the pooled n_train + n_test volumes
SETS = {240: (288, 80), 480: (560, 160), 1920: (2400, 480)}


def data_file(work: Path, size: int) -> Path:
    """The synthetic set of a size, written once (float32 MAT v5, as the built-in set)."""
    n_train, n_test = SETS[size]
    path = work / f"synth-train{n_train}-test{n_test}-seed0.mat"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "stvit.data", "synth", "--out", str(path), "--n-train", str(n_train),
                        "--n-test", str(n_test), "--seed", "0", "--dtype", "float32"], check=True, cwd=ROOT)
    return path


def cross_validate(work: Path, size: int, arm: str) -> dict:
    """cv.json of one arm at one size (run, resumed or read)."""
    out = work / f"cv-{size}-{arm}"
    if not (out / "cv.json").is_file():
        if (out / "folds.json").is_file():
            cmd = ["--resume", str(out), "--quiet"]
        else:
            cmd = ["--data", str(data_file(work, size)), "--folds", str(FOLDS), "--preset", "demo", "--seed",
                   str(SEED), "--standardize" if arm == "on" else "--no-standardize", "--out", str(out), "--quiet"]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stvit.cv", *cmd], check=True, cwd=ROOT)
        print(f"size {size}, standardize {arm}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads((out / "cv.json").read_text())


def row(cv: dict) -> dict:
    """Per-fold accuracies and their mean and sd (ddof 1)."""
    model = [f["model"]["accuracy"] for f in cv["folds"]]
    base = [f["baseline"]["accuracy"] for f in cv["folds"]]
    n_train = [cv["n_volumes"] - f["n_test"] for f in cv["folds"]]
    return {"n_volumes": cv["n_volumes"], "n_subjects": cv["n_subjects"], "train_part": n_train,
            "model": model, "baseline": base,
            "model_mean": float(np.mean(model)), "model_sd": float(np.std(model, ddof=1)),
            "baseline_mean": float(np.mean(base)), "baseline_sd": float(np.std(base, ddof=1)),
            "difference_mean": float(np.mean(np.subtract(model, base)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="folder for the data files and cv directories")
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SETS), choices=sorted(SETS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    results = {"command": "python -m stvit.cv --data FILE --folds 3 --preset demo --seed 0 "
                          "--standardize|--no-standardize --out DIR --quiet", "folds": FOLDS, "seed": SEED,
               "sets": {str(s): {"n_train": SETS[s][0], "n_test": SETS[s][1]} for s in args.sizes}, "rows": {}}
    for size in args.sizes:
        for arm in ("off", "on"):
            results["rows"][f"{size}-{arm}"] = row(cross_validate(args.work, size, arm))
            (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for key, r in results["rows"].items():
        print(f"{key}: model {r['model_mean']:.3f} ± {r['model_sd']:.3f}, baseline {r['baseline_mean']:.3f} ± "
              f"{r['baseline_sd']:.3f}")


if __name__ == "__main__":
    main()
