#!/usr/bin/env bash
# Run the GPU check under a hard wall-clock limit; installs and downloads nothing.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --data-dir DIR --out PATH]
#
# The Python script keeps its own phases inside --budget-s (400 s by default) and rewrites its table
# after every phase; this wrapper only guarantees the whole run ends: after GPU_CHECK_LIMIT_S seconds
# (450 by default) it interrupts the script, which then prints the table it has, and kills it 10 s later.
# PYTHON picks the interpreter (default: python3 on PATH, with worstforget importable or run from here).
set -u
cd "$(dirname "$0")/.." || exit 1
limit="${GPU_CHECK_LIMIT_S:-450}"
python="${PYTHON:-python3}"
"$python" -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())" >&2 \
    || { echo "gpu_check.sh: $python cannot import torch" >&2; exit 2; }
timeout --signal=INT --kill-after=10 "$limit" "$python" benchmarks/gpu_check.py "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check.sh: stopped after ${limit} s; the table file holds every phase that finished" >&2
fi
exit "$status"
