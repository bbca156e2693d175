#!/usr/bin/env bash
# A small hyperparameter search on the built-in synthetic set (preset demo, CPU, the shipped search space):
# 5 trials over 2 subject-grouped folds of the training split, then the final run of the best config.
# One thread (OMP_NUM_THREADS=1): on a shared 2-core machine two threads per process spun more than they worked.
# The tune directory's summary, best config and figures are copied into this study's folder (git keeps the
# earlier results).
#   bash bench/studies/2026-11-29-cpu-tune-demo/tune_demo.sh [OUT]
#                                        (OUT default runs/tune-demo; run it again to continue after a stop)
set -euo pipefail
dest="$(cd "$(dirname "$0")" && pwd)"
cd "$dest/../../.."
out="${1:-runs/tune-demo}"
uptime
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nice -n 10 python -m stvit.tune --preset demo --device cpu --trials 5 --folds 2 --out "$out" --quiet
uptime
mkdir -p "$dest/figures"
cp "$out/summary.md" "$out/summary.json" "$out/best_config.json" "$out/space.json" "$dest/"
cp "$out"/figures/*.png "$dest/figures/"
