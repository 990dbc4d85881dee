#!/usr/bin/env bash
# The release check on one CUDA GPU, in one call, by sections (SECTIONS, default "tests bench fused_ce"):
#   tests     every GPU test file side by side (triton parity + CUDA graphs + fused losses | sdpa/eager), and
#             beside them `blossom-hf evaluate` of the bundled ML-1M model per backend (needs datasets + ml-1m)
#   bench     layer rows at every L, whole-model rows, serving-path inference rows (blossom_hf.benchmarks.gpu)
#   fused_ce  the catalogue cross-entropy: logits / chunked / Liger-Kernel / cut-cross-entropy
#   sdpa      blossom/sdpa against blossom/triton inference, both sdpa layouts (threshold measurement)
#   epochs    ML-1M window-200 epoch times, BlossomRec (triton) and full attention (sdpa)
# Wheels: datasets (+ dill, multiprocess) in .whl, the optional loss libraries in .whl/extra (pure Python).
# Writes everything under $OUT. Knobs: SECTIONS, TESTS ("triton sdpa": which GPU test sets), TEST_TIMEOUT,
# BENCH_BUDGET, LENGTHS, MODEL_LENGTHS, INFERENCE_LENGTHS, BENCH_ROWS, MODEL_ROWS, BENCH_OPS ("--no-ops" or empty),
# BENCH_EXTRA (more benchmark options, e.g. "--rounds 4").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
SECTIONS=" ${SECTIONS:-tests bench fused_ce} "
site=/tmp/blossom_site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  .whl/*.whl .whl/extra/*.whl > "$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$site"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/machine.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/machine.txt"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [[ $SECTIONS == *" tests "* ]]; then
  stamp tests
  TESTS=" ${TESTS:-triton sdpa} "
  triton_pid="" sdpa_pid=""
  if [[ $TESTS == *" triton "* ]]; then
    BLOSSOM_PARITY_JSON="$OUT/parity.jsonl" timeout "${TEST_TIMEOUT:-170}" python -m pytest -m gpu -q -p no:cacheprovider \
      -rfE tests/test_triton_gpu.py tests/test_triton_fast_launch.py tests/test_cuda_graphs.py tests/test_fused_losses.py \
      > "$OUT/triton_tests.log" 2>&1 &
    triton_pid=$!
  fi
  if [[ $TESTS == *" sdpa "* ]]; then
    timeout "${TEST_TIMEOUT:-170}" python -m pytest -m gpu -q -p no:cacheprovider -rfE tests/test_sdpa_gpu.py \
      > "$OUT/sdpa_tests.log" 2>&1 &
    sdpa_pid=$!
  fi
  if [ -n "${BLOSSOM_DATA_DIR:-}" ]; then
    for backend in sdpa triton eager; do
      timeout 45 python -m blossom_hf evaluate --model model_cards/blossomrec-ml1m --dataset ml-1m \
        --attn-implementation "$backend" --max-users 1000 --device cuda --json > "$OUT/evaluate_$backend.json" \
        2>> "$OUT/evaluate.log"
      echo "evaluate $backend: exit $?"
    done
  fi
  if [ -n "$triton_pid" ]; then
    wait "$triton_pid"; echo "triton/graphs/fused-loss GPU tests: exit $?"; tail -n 6 "$OUT/triton_tests.log"
  fi
  if [ -n "$sdpa_pid" ]; then
    wait "$sdpa_pid"; echo "sdpa/eager GPU tests: exit $?"; tail -n 6 "$OUT/sdpa_tests.log"
  fi
fi
if [[ $SECTIONS == *" bench "* ]]; then
  stamp bench
  # BENCH_ROWS / MODEL_ROWS: shell words (quote a key with a space: BENCH_ROWS='blossom/triton "full/sdpa bf16"')
  eval "bench_rows=(${BENCH_ROWS:-blossom/triton \"full/sdpa bf16\"})"
  eval "model_rows=(${MODEL_ROWS:-blossom/triton full/sdpa})"
  # shellcheck disable=SC2086
  timeout $(( ${BENCH_BUDGET:-150} + 40 )) python -m blossom_hf.benchmarks.gpu --lengths ${LENGTHS:-50 200 512 1024 2048 4096 8192} \
    --rows "${bench_rows[@]}" --model-lengths ${MODEL_LENGTHS:-200 1024 4096 8192} \
    --model-rows "${model_rows[@]}" --inference-lengths ${INFERENCE_LENGTHS:-200 1024 4096} \
    ${BENCH_OPS---no-ops} \
    --warmup 2 --steps 8 ${BENCH_EXTRA:-} --time-budget "${BENCH_BUDGET:-150}" --out-dir "$OUT/bench" > "$OUT/bench.log" 2>&1
  echo "benchmark: exit $?"; tail -n 40 "$OUT/bench/benchmark.md" 2>/dev/null || tail -n 20 "$OUT/bench.log"
fi
if [[ $SECTIONS == *" fused_ce "* ]]; then
  stamp fused_ce
  timeout 110 python -m blossom_hf.benchmarks.fused_ce --time-budget 70 --out-dir "$OUT/fused_ce" \
    --cases loss:196608:3707 loss:16384:1000000 model:200:blossom model:200:full model:1024:blossom model:1024:full \
    > "$OUT/fused_ce.log" 2>&1
  echo "fused_ce: exit $?"; cat "$OUT/fused_ce/fused_ce.md" 2>/dev/null || tail -n 20 "$OUT/fused_ce.log"
fi
if [[ $SECTIONS == *" sdpa "* ]]; then
  stamp sdpa
  eval "timeout 120 ${SDPA_COMMAND:?set SDPA_COMMAND}" > "$OUT/sdpa_bench.log" 2>&1
  echo "sdpa threshold: exit $?"; tail -n 30 "$OUT/sdpa_bench.log"
fi
if [[ $SECTIONS == *" epochs "* ]]; then
  stamp epochs
  OUT="$OUT/epochs" RUN_TIMEOUT="${RUN_TIMEOUT:-55}" EPOCHS="${EPOCHS:-4}" bash scripts/dev/epoch_times.sh
fi
stamp done
