#!/usr/bin/env bash
# One-shot GPU check for the runtime kernels (run from the repository root on a lent CUDA machine, no internet).
# Runs the Triton kernel tests on CUDA (the tests pick CUDA when torch.cuda.is_available()) and a short
# sparse-vs-dense attention timing, writing everything under $OUT. Installs nothing. Never fails hard:
# every step has a timeout and the script exits 0, leaving what it learned in $OUT/summary.txt.
set -x
OUT="${OUT:-/tmp/edgecpm_gpu_check}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 0
PY="${PYTHON:-python}"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

{ date -u; nvidia-smi; "$PY" -V; "$PY" -m pip list 2>/dev/null | grep -i -E "torch|triton|numpy|pytest"; } \
    > "$OUT/env.txt" 2>&1

if ! timeout 120 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    note "torch.cuda.is_available() is False here (torch: $("$PY" -c 'import torch; print(torch.__version__)' 2>&1))."
    note "The installed torch has no CUDA support (the pinned 2.13.0 CPU wheel?); no GPU kernels were run. See env.txt."
    exit 0
fi
if ! timeout 120 "$PY" -c "import triton" 2>>"$OUT/summary.txt"; then
    note "triton does not import; only the torch paths could run."
fi

# make `import edgecpm` work: an installed package, else an editable install without network, else a symlink farm
if ! timeout 60 "$PY" -c "import edgecpm.runtime_kernels" 2>/dev/null; then
    timeout 180 "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/pip_install.txt" 2>&1
fi
if ! timeout 60 "$PY" -c "import edgecpm.runtime_kernels" 2>/dev/null; then
    farm="$(mktemp -d)/edgecpm"
    mkdir -p "$farm"
    for f in sdk/*; do ln -s "$PWD/$f" "$farm/$(basename "$f")"; done
    for sub in exporters runtime_kernels device_profiles; do ln -s "$PWD/$sub" "$farm/$sub"; done
    export PYTHONPATH="$(dirname "$farm"):${PYTHONPATH:-}"
    note "edgecpm imported through a symlink farm at $farm"
fi
timeout 60 "$PY" -c "import edgecpm.runtime_kernels as rk, torch; print('edgecpm ok, cuda', torch.cuda.get_device_name(0))" \
    >> "$OUT/summary.txt" 2>&1

# 1) kernel tests on CUDA: Triton vs the reference (and everything else in the kernel test files)
timeout 300 "$PY" -m pytest tests/test_kernels_infllmv2.py tests/test_kernels_lightning.py \
    tests/test_kernels_ternary.py -q -p no:cacheprovider -x -k "triton or decode or needle" \
    > "$OUT/pytest_kernels_cuda.txt" 2>&1
note "pytest (CUDA) exit code: $? ; last line: $(tail -n 1 "$OUT/pytest_kernels_cuda.txt")"

# 2) short sparse-vs-dense attention timing, MiniCPM4-8B head layout, Triton and vectorized sparse paths
for impl in triton vectorized; do
    timeout 150 "$PY" benchmarks/kernels_attention.py --device cuda --impl "$impl" \
        --lengths 8192 32768 65536 131072 --runs 20 --prefill-runs 5 --chunk 256 \
        > "$OUT/attention_cuda_$impl.txt" 2>&1
    note "attention timing ($impl) exit code: $?"
    cat "$OUT/attention_cuda_$impl.txt" >> "$OUT/summary.txt"
done
exit 0
