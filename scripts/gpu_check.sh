#!/usr/bin/env bash
# GPU check of the fused Triton backend: the CUDA parity tests (tests/test_triton_gpu.py) and the
# benchmark (python -m blossom_hf.benchmarks.gpu). Writes everything under $OUT (default ./gpu_out):
#   env.txt, gpu_tests.log, parity.jsonl, benchmark.log, benchmark.json, benchmark.md, benchmark.png, profile.txt
# Knobs: PARITY_TIMEOUT, BENCH_TIMEOUT (seconds), SKIP_TESTS=1, SKIP_BENCH=1, BENCH_ARGS="--lengths ...".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  BLOSSOM_PARITY_JSON="$OUT/parity.jsonl" timeout "${PARITY_TIMEOUT:-300}" \
    python -m pytest -m gpu tests/test_triton_gpu.py -q -s -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  timeout "${BENCH_TIMEOUT:-600}" python -m blossom_hf.benchmarks.gpu --out-dir "$OUT" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/benchmark.log"
  [ "$rc" = 0 ] && rc=${PIPESTATUS[0]}
fi
exit "$rc"
