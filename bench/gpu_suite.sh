#!/usr/bin/env bash
# GPU tier and GPU benchmarks on a lent GPU machine, in one command (budgets sum to 555 s, under
# the device tool's 600 s per call):
#   1. install the project editable (no dependency resolution: the machine has no network),
#   2. the `gpu`-marked tests (compiled Triton kernels, training-size shapes),
#   3. the prototype-loss benchmark presets on CUDA, float16 (paper 1 Table 12 ran in fp16)
#      and float32.
#   4. one full iBOT ViT-S/16 training step over B x K (bench/train_memory.py).
# Everything it writes goes under $OUT (10 files at most):
#   env.log  install.log  pytest_gpu.log  bench_float16_cls.log  bench_float16_patch.log
#   bench_float32_cls.log  prototype_loss_<device>.csv  train_memory.log
#   train_memory_<device>.csv  summary.txt
# Copy the CSV into bench/results/ afterwards and commit it with the device, date and commit.
#
# Usage (repository root):  OUT=/some/dir bash bench/gpu_suite.sh
# Budgets (seconds) can be changed: TEST_BUDGET, BENCH16_BUDGET, BENCH32_BUDGET, TRAIN_BUDGET;
# SKIP_INSTALL=1 leaves the environment alone (for a dry run where the project is installed).
set -u -o pipefail

OUT="${OUT:?set OUT to the folder that receives logs and CSVs}"
PY="${PYTHON:-python}"
TEST_BUDGET="${TEST_BUDGET:-150}"
BENCH16_BUDGET="${BENCH16_BUDGET:-90}"
BENCH32_BUDGET="${BENCH32_BUDGET:-45}"
TRAIN_BUDGET="${TRAIN_BUDGET:-120}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME BUDGET LOG CMD...: run with a time limit, record the exit status
    local name="$1" budget="$2" log="$3"
    shift 3
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$budget" "$@" > "$log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $budget s)" | tee -a "$SUMMARY"
    return 0
}

{
    date -u
    git rev-parse HEAD 2>/dev/null || echo "no git"
    nvidia-smi || echo "nvidia-smi not found"
    "$PY" -c 'import sys, torch, triton; print(sys.version); print("torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__);
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")'
} > "$OUT/env.log" 2>&1

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    step install 60 "$OUT/install.log" \
        "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
SLUG=$("$PY" -c 'import sys, torch; sys.path.insert(0, "bench"); import prototype_loss as b
print(b.device_slug(torch.device("cuda")))' 2>/dev/null) || SLUG=gpu
CSV="$OUT/prototype_loss_${SLUG:-gpu}.csv"
"$PY" -c 'import fastproto.kernels' >> "$OUT/install.log" 2>&1 \
    || echo "fastproto.kernels does not import: see install.log" | tee -a "$SUMMARY"

# unset TRITON_INTERPRET so the kernels compile; the gpu tier keeps conftest from setting it
step pytest_gpu "$TEST_BUDGET" "$OUT/pytest_gpu.log" \
    env -u TRITON_INTERPRET FASTPROTO_TEST_TIER=gpu "$PY" -m pytest -m gpu -q -rA tests

# rows are appended one by one, so a benchmark cut short by its budget keeps what it measured
step bench_float16_cls "$BENCH16_BUDGET" "$OUT/bench_float16_cls.log" \
    env -u TRITON_INTERPRET "$PY" bench/prototype_loss.py --device cuda --dtype float16 \
    --rows cls --batch 64 100 --max-k 1048576 --out "$CSV"
step bench_float16_patch "$BENCH16_BUDGET" "$OUT/bench_float16_patch.log" \
    env -u TRITON_INTERPRET "$PY" bench/prototype_loss.py --device cuda --dtype float16 \
    --rows patch --batch 64 --max-k 1048576 --out "$CSV"
step bench_float32_cls "$BENCH32_BUDGET" "$OUT/bench_float32_cls.log" \
    env -u TRITON_INTERPRET "$PY" bench/prototype_loss.py --device cuda --dtype float32 \
    --rows cls --batch 64 --max-k 262144 --out "$CSV"

# a full iBOT ViT-S/16 step (paper 1 Table 12 layout): peak memory and images/s over B x K
step train_memory "$TRAIN_BUDGET" "$OUT/train_memory.log" \
    env -u TRITON_INTERPRET "$PY" bench/train_memory.py --out "$OUT/train_memory_${SLUG:-gpu}.csv"

tail -n 3 "$OUT/pytest_gpu.log" >> "$SUMMARY"
echo "files in $OUT:" >> "$SUMMARY"
ls -l "$OUT" >> "$SUMMARY"
