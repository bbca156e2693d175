#!/usr/bin/env bash
# bench/kernel_report.py with triton 3.6 (the version torch 2.11 ships with, common on GPU hosts), in a side
# virtual environment outside the repository: torch 2.13.0 (the CPU wheel) and triton 3.6.0 from the package
# index, then the report. Compiling for GPU targets needs no GPU.
#
# Usage: bash bench/kernel_report_triton36.sh --out DIR [more bench/kernel_report.py arguments]
#        (the environment goes to $TRITON36_VENV, default ~/.cache/stvit/venv-triton36, made once and reused)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRITON36_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/stvit/venv-triton36}
if ! "$VENV/bin/python" -c "import torch, triton; assert triton.__version__ == '3.6.0'" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0" "triton==3.6.0"
fi
KERNEL_REPORT_VIA="bash bench/kernel_report_triton36.sh" exec "$VENV/bin/python" bench/kernel_report.py "$@"
