#!/usr/bin/env bash
# One check for a lent GPU machine, in under 8 minutes on an H100, with only what such a machine has (torch,
# triton, pytest, pytest-benchmark, nvidia-ml-py, h5py, scipy, numpy; no internet):
#
#   ceilings  device-to-device copy GB/s, pinned host-to-device GB/s, bf16 GEMM TFLOP/s   -> ceilings.json
#   kernels   the kernels' startup self-check at fp32/bf16/fp16, and bench/kernel_report.py: every launch plan
#             compiled for sm75/80/89/90 and for this GPU through its driver              -> kernels.json
#   epochs    one pretrain + one finetune epoch of 3200 volumes (paper preset, batch 8), seed-style baseline and
#             fused+compile                                                              -> epochs.json
#   bench     pytest bench --benchmark: train steps, then the four ops                   -> bench.json
#   tests     the CUDA tests: kernels natively, parity, compile, SDPA, precision         -> tests.log
#   profile   python -m stvit.profile, paper pretrain, fused+compile                     -> profile.md
#   summary   everything above as Markdown, written last                                 -> summary.md
#
# Usage: bash bench/gpu_check.sh            (OUT=./gpu_check_out unless set; at most 8 files are written there)
#        STVIT_GPU_CHECK_DRY=1 bash bench/gpu_check.sh   (tiny shapes, no compile: tries the script on a CPU)
# Each section runs under `timeout`, within a total budget (CHECK_BUDGET_S, default 465 s) that keeps a minimum
# for the sections after it; a section that fails or times out is recorded and the next one runs. Everything a
# section prints goes to log.txt (tests to tests.log).
set -u
cd "$(dirname "$0")/.."

OUT=${OUT:-./gpu_check_out}
DRY=${STVIT_GPU_CHECK_DRY:-0}
PY=${PYTHON:-python}
BUDGET=${CHECK_BUDGET_S:-465}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WORK=$(mktemp -d)  # scratch, outside $OUT: section status, the profile folder, a tqdm stand-in
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
DEADLINE=$((START + BUDGET))
STATUS="$WORK/status.jsonl"
LOG="$OUT/log.txt"
: > "$LOG"
DRYFLAG=""
[ "$DRY" = "1" ] && DRYFLAG="--dry"

# engine.py draws its progress bar with tqdm; a machine without it gets a silent stand-in
NOTES=""
if ! "$PY" -c "import tqdm" 2>/dev/null; then
  mkdir -p "$WORK/shim/tqdm"
  cat > "$WORK/shim/tqdm/__init__.py" <<'EOF'
class tqdm:  # stand-in for a machine without tqdm: no progress bar
    def __init__(self, *args, **kwargs): pass
    def update(self, n=1): pass
    def set_postfix(self, *args, **kwargs): pass
    def close(self): pass
EOF
  cp "$WORK/shim/tqdm/__init__.py" "$WORK/shim/tqdm/auto.py"
  export PYTHONPATH="$PYTHONPATH:$WORK/shim"
  NOTES="tqdm is not installed here: a silent stand-in was put on PYTHONPATH"
fi

# meta: date, command, commit, device, versions
DRY="$DRY" NOTES="$NOTES" "$PY" - > "$WORK/meta.json" 2>>"$LOG" <<'EOF'
import datetime, json, os, platform, subprocess
import torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "missing"
def sh(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
drv = sh("nvidia-smi", "--query-gpu=driver_version,power.limit,memory.total", "--format=csv,noheader")
meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "bash bench/gpu_check.sh" + (" (STVIT_GPU_CHECK_DRY=1)" if os.environ["DRY"] == "1" else ""),
        "commit": sh("git", "rev-parse", "--short", "HEAD") or "n/a",
        "device": dev + (f" (driver, power limit, memory: {drv})" if drv else ""),
        "software": f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, python {platform.python_version()}",
        "dry": os.environ["DRY"] == "1", "notes": [n for n in [os.environ["NOTES"]] if n]}
print(json.dumps({"meta": meta}))
EOF
cat "$WORK/meta.json" > "$STATUS"

# run_section NAME CAP_S RESERVE_S LOGFILE CMD...: run CMD under timeout min(CAP, time left - RESERVE)
run_section() {
  local name=$1 cap=$2 reserve=$3 log=$4; shift 4
  local now left limit t0 rc status
  now=$(date +%s)
  left=$((DEADLINE - now - reserve))
  limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    echo "{\"name\": \"$name\", \"status\": \"skipped (no time left)\", \"seconds\": 0, \"limit\": $limit}" >> "$STATUS"
    echo "== $name: skipped, no time left" | tee -a "$LOG"
    return
  fi
  echo "== $name (limit ${limit} s)" | tee -a "$LOG"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124|137) status="timed out" ;;
    *) status="failed (rc $rc)" ;;
  esac
  echo "{\"name\": \"$name\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - t0 )), \"limit\": $limit}" >> "$STATUS"
  echo "== $name: $status in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

#                       name      cap  reserve (minimum kept for the sections after)
run_section ceilings     40  260 "$LOG" "$PY" bench/gpu_check.py ceilings "$OUT" $DRYFLAG
if [ "$DRY" = "1" ]; then  # on a CPU the self-check runs the kernels in Triton's interpreter
  run_section kernels    90  200 "$LOG" env TRITON_INTERPRET=1 "$PY" bench/gpu_check.py kernels "$OUT" --dry
else
  run_section kernels    90  200 "$LOG" "$PY" bench/gpu_check.py kernels "$OUT"
fi
run_section epochs      170  140 "$LOG" "$PY" bench/gpu_check.py epochs "$OUT" $DRYFLAG

if [ "$DRY" = "1" ]; then
  run_section bench     200   80 "$LOG" "$PY" -m pytest -q -p no:cacheprovider bench/test_train_step.py --benchmark \
      -k baseline --bench-summary "$OUT/bench.json"
  run_section tests     100   40 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_flops.py
  printf '%s' '{"model": {"dim": 32, "depth": 1, "heads": 2, "temporal_depth": 1, "temporal_heads": 2,
    "decoder_dim": 32, "decoder_depth": 1}, "train": {"batch_size": 1}}' > "$WORK/tiny.json"
  run_section profile    60   10 "$LOG" "$PY" -m stvit.profile --device cpu --config "$WORK/tiny.json" --no-compile \
      --steps 2 --warmup 1 --n-train 2 --out "$WORK/profile"
else
  run_section bench     200   80 "$LOG" "$PY" -m pytest -q -p no:cacheprovider bench/test_train_step.py \
      bench/test_patch_embed.py bench/test_mae_gather.py bench/test_mae_scatter.py bench/test_norm_pix_mse.py \
      --benchmark --bench-summary "$OUT/bench.json"
  # only the CUDA cases (-k cuda): the CPU ones run in CI; the CUDA parity matrix compiles many graphs, so a
  # timeout here still leaves the finished tests in tests.log
  run_section tests     100   40 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -rfEs -k cuda \
      tests/unit/test_patch_embed.py tests/unit/test_mae_gather.py tests/unit/test_mae_scatter.py \
      tests/unit/test_norm_pix_mse.py tests/unit/test_kernel_select.py tests/e2e/test_parity.py \
      tests/unit/test_fused_model.py tests/e2e/test_fused_model.py tests/unit/test_sdpa.py \
      tests/unit/test_precision.py tests/e2e/test_compile.py
  run_section profile    60   10 "$LOG" "$PY" -m stvit.profile --preset paper --stage pretrain --variant fused+compile \
      --steps 40 --warmup 3 --profile-steps 3 --out "$WORK/profile"
fi
[ -f "$WORK/profile/report.md" ] && cp "$WORK/profile/report.md" "$OUT/profile.md"  # (its PNG stays out: 8 files)

# last: the Markdown summary
"$PY" bench/gpu_check.py summary "$OUT" --status "$STATUS" --profile-json "$WORK/profile/report.json" \
    > /dev/null 2>> "$LOG" || echo "summary failed: see $LOG" >&2
echo "gpu check done in $(( $(date +%s) - START )) s; files in $OUT:"
ls -l "$OUT"
