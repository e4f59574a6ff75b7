#!/usr/bin/env bash
# The GPU checks of a short lent-GPU session in one call of at most 420 s, most important first:
#
#   step         budget  what
#   preflight      40 s  tools/gpu_preflight.py: Python >= 3.11, torch + CUDA device, triton,
#                        timm, numpy, pytest (and a note when setuptools cannot make the
#                        editable install); stops the suite when not ready
#                        (when it runs out of time instead, the suite goes on without its verdict)
#   install        12 s  pip install --no-index --no-build-isolation --no-deps -e . (offline;
#                        the machine's own torch/triton/timm stay as they are)
#   link_tree       3 s  only when the install failed (a setuptools that cannot build offline,
#                        a read-only environment): tools/source_site.py puts the package on
#                        PYTHONPATH as a tree of links (with PYTHONSAFEPATH=1)
#   headline      130 s  the fused loss (triton) at K = 65536 and 262144, B = 64 CLS rows, bf16,
#                        against the materialised reference at K = 65536, then the aligned-rows
#                        sweep on B = 64 patch rows at K = 65536 (bench/prototype_loss.py)
#   memory        100 s  paper 1 Table 12 points, a full iBOT ViT-S/16 step at B = 64, fp16,
#                        the most telling first, so a cut step keeps them: fused at K = 8192
#                        and 2^20 (the claim's two ends), reference at 1024 and 8192 (its
#                        slope), then fused at 65536 and 262144
#                        (bench/train_memory.py; each point in a fresh process, ~10 s of
#                        start-up each, kernels from the triton cache after the first)
#   pytest_gpu    100 s  the `gpu` test tier, kernels compiled
#   (kill grace 6 x 5 s, summary and copies 5 s)
#   total         420 s
#
# Each step runs under `timeout` (SIGINT at its budget, SIGKILL 5 s later). Every benchmark
# point is one warm-up call and 3 timed calls on inputs made on the device, and its rows are
# appended to bench/results/<bench>_<device>.csv as soon as it is measured; after each step those
# CSVs are copied to $OUT, so a step cut short keeps what it measured. Files under $OUT (7):
#   summary.txt  setup.log  headline.log  memory.log  pytest_gpu.log
#   prototype_loss_<device>.csv  train_memory_<device>.csv
# Copy the CSVs over bench/results/ afterwards (they hold the committed rows plus this run's)
# and commit them; each row names the device, versions, commit and date.
#
# Usage, from the repository root:   OUT=/some/dir bash bench/gpu_suite.sh
# PYTHON picks the interpreter (default python3, the one that holds PyTorch on a lent machine).
set -u -o pipefail

OUT="${OUT:?set OUT to the folder that receives the logs and CSV copies}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
SETUP_LOG="$OUT/setup.log"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # compiled kernels everywhere below
: > "$SUMMARY"
: > "$SETUP_LOG"

step() {  # step NAME BUDGET LOG CMD...: run under a time limit, record exit status and seconds
    local name="$1" budget="$2" log="$3"
    shift 3
    local start=$SECONDS rc=0
    echo "== $name (budget $budget s): $*" >> "$log"
    timeout --signal=INT --kill-after=5 "$budget" "$@" >> "$log" 2>&1 || rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (budget $budget s)" | tee -a "$SUMMARY"
    return "$rc"
}

copy_results() {  # the CSVs this run appends to, as they stand now
    cp -f "bench/results/prototype_loss_$SLUG.csv" "bench/results/train_memory_$SLUG.csv" \
        "$OUT/" 2>/dev/null || true
}

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    else
        echo "nvidia-smi not found"
    fi
} | tee -a "$SUMMARY" >> "$SETUP_LOG"

rc=0
step preflight 40 "$SETUP_LOG" "$PY" tools/gpu_preflight.py || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then  # slow start-up, not a verdict: go on
    echo "preflight ran out of time: going on without its verdict" | tee -a "$SUMMARY"
elif [ "$rc" -ne 0 ]; then
    echo "NOT READY: see setup.log; nothing was run" | tee -a "$SUMMARY"
    grep "NOT READY" "$SETUP_LOG" >> "$SUMMARY"
    exit 1
fi
SLUG=$(sed -n 's/^device slug: //p' "$SETUP_LOG" | tail -n 1)
SLUG="${SLUG:-gpu}"

rc=0
step install 12 "$SETUP_LOG" "$PY" -m pip install --quiet --no-index \
    --disable-pip-version-check --no-build-isolation --no-deps -e . || rc=$?
if [ "$rc" -ne 0 ]; then
    SITE="$(mktemp -d)/site"
    if ! step link_tree 3 "$SETUP_LOG" "$PY" tools/source_site.py "$SITE"; then
        echo "the editable install and the link tree failed: see setup.log; nothing was run" \
            | tee -a "$SUMMARY"
        exit 1
    fi
    # the checkout's fastproto/ (without kernels/, data_prep/) must not shadow the tree
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    echo "the editable install failed (see setup.log): running from the link tree $SITE" \
        | tee -a "$SUMMARY"
fi

step headline 130 "$OUT/headline.log" \
    "$PY" bench/prototype_loss.py --device cuda --dtype bfloat16 --warmup 1 --repeats 3 \
    --preset cls-b64-k65536:triton,reference cls-b64-k262144:triton patch-b64-k65536:triton \
    --out "bench/results/prototype_loss_$SLUG.csv"
copy_results

step memory 100 "$OUT/memory.log" \
    "$PY" bench/train_memory.py --device cuda --precision fp16 --batch 64 --repeats 3 \
    --points auto:8192 auto:1048576 reference:1024 reference:8192 auto:65536 auto:262144 \
    --no-report --out "bench/results/train_memory_$SLUG.csv"
copy_results

step pytest_gpu 100 "$OUT/pytest_gpu.log" \
    env FASTPROTO_TEST_TIER=gpu "$PY" -m pytest -m gpu -p no:cacheprovider -q -rfEs \
    --durations=15 tests

RESULT=$(grep -E '(passed|failed|skipped|error).* in [0-9.]+s' "$OUT/pytest_gpu.log" | tail -n 1)
{
    echo "pytest: ${RESULT:-no summary line (see pytest_gpu.log)}"
    echo "suite: $SECONDS s in all"
    ls -l "$OUT"
} >> "$SUMMARY"
exit 0
