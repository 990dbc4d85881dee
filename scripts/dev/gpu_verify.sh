#!/usr/bin/env bash
# After a change to the model or any backend, on one CUDA GPU, in one call: every GPU test (each backend against
# the others, recommend() per backend, the Triton parity suite; the two test files run side by side), and beside
# them `blossom-hf evaluate` of the bundled ML-1M checkpoint with each backend (when `datasets` imports and
# $BLOSSOM_DATA_DIR holds ml-1m); then, on a quiet GPU, the GPU-inference rows of the benchmark.
# Writes 8 files under $OUT (default ./gpu_out). Knobs: TEST_TIMEOUT, EVAL_TIMEOUT, BENCH_TIMEOUT (seconds),
# INFERENCE_LENGTHS, EVAL_USERS.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

timeout "${TEST_TIMEOUT:-240}" python -m pytest -m gpu tests/test_sdpa_gpu.py -q -p no:cacheprovider -rfE \
  > "$OUT/sdpa_tests.log" 2>&1 &
sdpa_pid=$!
BLOSSOM_PARITY_JSON="$OUT/parity.jsonl" timeout "${TEST_TIMEOUT:-240}" python -m pytest -m gpu tests/test_triton_gpu.py \
  tests/test_cuda_graphs.py -q -p no:cacheprovider -rfE > "$OUT/triton_tests.log" 2>&1 &
triton_pid=$!
if python -c "import datasets" 2>/dev/null && [ -n "${BLOSSOM_DATA_DIR:-}" ]; then
  for backend in sdpa triton eager; do
    timeout "${EVAL_TIMEOUT:-60}" python -m blossom_hf evaluate --model model_cards/blossomrec-ml1m --dataset ml-1m \
      --attn-implementation "$backend" --max-users "${EVAL_USERS:-1000}" --device cuda --json \
      > "$OUT/evaluate_$backend.json" 2>> "$OUT/evaluate.log"
    echo "evaluate $backend: exit $?"
  done
  python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("evaluate_*.json")):
    try:
        rows[f.stem.split("_", 1)[1]] = json.loads(f.read_text())
    except ValueError as error:
        rows[f.stem.split("_", 1)[1]] = {"error": str(error)}
    f.unlink()
(out / "evaluate.json").write_text(json.dumps(rows, indent=1))
print(json.dumps({k: (v.get("test") or v) if isinstance(v, dict) else v for k, v in rows.items()})[:1500])
PY
else
  echo "evaluate: skipped (no datasets package or no BLOSSOM_DATA_DIR)"
fi
wait "$sdpa_pid"; sdpa_rc=$?
wait "$triton_pid"; triton_rc=$?
echo "sdpa/eager GPU tests: exit $sdpa_rc"; tail -n 15 "$OUT/sdpa_tests.log"
echo "triton GPU tests: exit $triton_rc"; tail -n 15 "$OUT/triton_tests.log"
bench="$(mktemp -d)"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-120}" python -m blossom_hf.benchmarks.gpu --lengths --model-lengths --no-ops \
  --inference-lengths ${INFERENCE_LENGTHS:-200 1024 4096} --warmup 2 --steps 8 --out-dir "$bench" > "$OUT/bench.log" 2>&1
echo "benchmark: exit $?"
cp "$bench"/benchmark.json "$bench"/benchmark.md "$OUT"/ 2>/dev/null
tail -n 12 "$OUT/bench.log"
[ "$sdpa_rc" = 0 ] && [ "$triton_rc" = 0 ]
