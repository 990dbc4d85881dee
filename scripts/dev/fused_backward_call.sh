#!/usr/bin/env bash
# One GPU call for the tile strategy's one-pass backward ("tile-fused"): the Triton GPU parity tests
# (tests/test_triton_gpu.py, which run "tile-fused" at L = 50-4096 and on other shapes), then on a quiet GPU the
# layer A/B of scripts/dev/fused_backward_ab.py. Everything under $OUT (tarred). Knobs: TEST_TIMEOUT, LENGTHS, ROUNDS.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
work="$OUT/r"
mkdir -p "$work"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$work/machine.txt"
BLOSSOM_PARITY_JSON="$work/parity.jsonl" timeout "${TEST_TIMEOUT:-130}" python -m pytest -m gpu -q -p no:cacheprovider \
  -rfE tests/test_triton_gpu.py > "$work/triton_tests.log" 2>&1
echo "triton GPU tests: exit $?"; tail -n 8 "$work/triton_tests.log"
# shellcheck disable=SC2086
timeout 150 python scripts/dev/fused_backward_ab.py --lengths ${LENGTHS:-200 512 1024 1536} --rounds "${ROUNDS:-5}" \
  --out "$work/fused_backward_ab.json" 2>&1 | grep -v Warning
tar -czf "$OUT/results.tar.gz" -C "$work" .
