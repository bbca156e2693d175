"""What the statistics and report.html add to a run, measured on a finished run directory.

    python bench/studies/2026-12-03-cpu-report/time_statistics.py RUN_DIR [--repeats 5]

In a process that has imported what a run has imported before its final statistics (torch, scikit-learn's metrics
and logistic regression, matplotlib), it times, as the run does them: importing `stvit.training.stats`, the
provenance (git and versions), `run_statistics` on the run's own test predictions with its subjects (10,000
permutations and resamples) and the sentence; then rendering report.html (`report_page.render_run`) in the same
warm process; then `python -m stvit.report RUN_DIR` as a new process (cold: every import). Prints one JSON object
with the median of each and the load average; writes nothing in RUN_DIR but report.html (the cold command).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load_before = os.getloadavg()

    import matplotlib.pyplot  # noqa: F401 - what a run has imported before its final statistics
    import numpy as np
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401

    t0 = time.perf_counter()
    from stvit.training import stats as S
    from stvit.training.provenance import provenance

    import_s = time.perf_counter() - t0
    cfg = json.loads((args.run_dir / "config.json").read_text())
    with np.load(args.run_dir / "predictions.npz") as f:
        pred = {k: f[k] for k in f.files}
    meta = {k[5:]: v for k, v in pred.items() if k in ("test_subject", "test_session", "test_run", "test_volume",
                                                       "test_onset")}
    n = cfg["train"]["permutations"]
    result = {}

    def statistics_once():
        result["stats"] = S.run_statistics(pred["test_labels"], pred["test_probs"], 2, meta,
                                           pred.get("baseline_test_probs"), n_perm=n, n_boot=n,
                                           seed=cfg["train"]["seed"])
        S.sentence(result["stats"])

    t0 = time.perf_counter()
    provenance("python -m stvit.train", "cpu")
    provenance_s = time.perf_counter() - t0  # the first call: git and the versions (cached after)
    stats_s = median_time(statistics_once, args.repeats)
    from stvit.training import report_page

    warm_report_s = median_time(lambda: report_page.render_run(args.run_dir), args.repeats)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cold = []
    for _ in range(max(1, args.repeats // 2)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stvit.report", str(args.run_dir)], check=True, env=env,
                       capture_output=True)
        cold.append(time.perf_counter() - t0)
    s = result["stats"]
    print(json.dumps({
        "run_dir": str(args.run_dir), "test_volumes": s["n"], "units": s["units"], "permutations": n,
        "import_stats_s": round(import_s, 3), "provenance_s": round(provenance_s, 3),
        "run_statistics_s": round(stats_s, 3), "of_which_permutation_test_s": s["permutation"]["seconds"],
        "added_to_the_run_s": round(import_s + provenance_s + stats_s, 3),
        "render_report_in_the_run_s": round(warm_report_s, 3),
        "python_m_stvit_report_s": round(statistics.median(cold), 3), "repeats": args.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()]}, indent=2))


if __name__ == "__main__":
    main()
