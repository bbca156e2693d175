"""What the run's baseline costs on the demo set: seconds and peak resident memory of `stvit.baseline` beside the
plain scikit-learn way of fitting the same model, each in a fresh process.

    nice -n 10 python bench/studies/2026-11-29-cpu-demo-recipe/baseline_cost.py [--n-train 1920] [--n-test 320]

`stvit.baseline`: float32 in-brain voxels gathered in blocks, StandardScaler by partial_fit and in place,
LogisticRegression on float32 (what every run does). `plain`: the same mask and grid, but the features taken with
one fancy index of the whole split and `Pipeline(StandardScaler(), LogisticRegression(C)).fit` per C (the scaler's
fit builds a float64 temporary of the whole matrix; its transform copies). Each variant reports the growth of the
peak resident set over the data set already in memory (ru_maxrss), and its seconds, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("stvit", "plain")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def measure(variant: str, n_train: int, n_test: int) -> dict:
    import numpy as np

    from stvit.training import baseline as B
    from stvit.data import make_synthetic, split_train_val

    data = make_synthetic(n_train, n_test, 0)
    tr, va = split_train_val(data.ids_train, data.y_train, 0.1, 0)
    before, load, t0 = peak_gb(), os.getloadavg()[0], time.perf_counter()
    if variant == "stvit":
        section, _ = B.baseline_metrics(data, {"train": tr, "val": va}, ["class0", "class1"])
        acc, C = section["accuracy"], section["C"]
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        mask = B.inbrain_mask(data.X_train, tr)
        flat = lambda X: X.reshape(len(X), -1)[:, mask]  # noqa: E731 - one fancy index of the whole split
        Xtr, Xva = flat(data.X_train[tr]), flat(data.X_train[va])
        fits = []
        for C in B.C_GRID:
            pipe = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(C=C, max_iter=B.MAX_ITER))])
            fits.append((pipe.fit(Xtr, data.y_train[tr]).score(Xva, data.y_train[va]), -C, pipe))
        best = max(fits, key=lambda f: f[:2])
        acc, C = float(best[2].score(flat(data.X_test), data.y_test)), -best[1]
    return {"variant": variant, "n_train": len(tr), "n_val": len(va), "n_test": n_test,
            "seconds": round(time.perf_counter() - t0, 1), "data_gb": round(before, 3),
            "peak_growth_gb": round(peak_gb() - before, 3), "test_accuracy": acc, "C": C,
            "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=1920)
    ap.add_argument("--n-test", type=int, default=320)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in this process
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.n_train, args.n_test)))
        return 0
    for v in VARIANTS:
        p = subprocess.run([sys.executable, __file__, "--variant", v, "--n-train", str(args.n_train), "--n-test",
                            str(args.n_test)], capture_output=True, text=True, check=True)
        print(p.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
