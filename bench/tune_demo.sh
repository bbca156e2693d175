#!/usr/bin/env bash
# A small hyperparameter search on the built-in synthetic set (preset demo, CPU, the shipped search space):
# 4 trials over 2 subject-grouped folds of the training split, then the final run of the best config.
# The tune directory's summary, best config and figures are copied to bench/results/<date>-cpu-tune-demo/.
#   bash bench/tune_demo.sh [OUT]        (OUT default runs/tune-demo; run it again to continue after a stop)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/tune-demo}"
dest="bench/results/$(date +%F)-cpu-tune-demo"
uptime
nice -n 10 python -m stvit.tune --preset demo --device cpu --trials 4 --folds 2 --out "$out" --quiet
uptime
mkdir -p "$dest/figures"
cp "$out/summary.md" "$out/summary.json" "$out/best_config.json" "$out/space.json" "$dest/"
cp "$out"/figures/*.png "$dest/figures/"
