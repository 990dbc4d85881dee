#!/usr/bin/env bash
# One GPU call for the sdpa backend's CUDA inference: every GPU test and `blossom-hf evaluate` of the bundled ML-1M
# model per backend (release_check.sh's "tests" section: triton parity + CUDA graphs + fused losses beside
# tests/test_sdpa_gpu.py), then on a quiet GPU the interleaved A/B of scripts/dev/sdpa_cuda_ab.py at short L (the
# backend as configured, the dense layout of 6bb0aba, other query-chunk sizes, triton, the dense model) and long L
# (dense and sparse layouts, triton). Everything under $OUT (tarred). Knobs: TEST_TIMEOUT, SHORT_LENGTHS,
# SHORT_ROWS, LONG_LENGTHS, ROUNDS, SECTIONS ("tests short long").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
work="$OUT/r"
mkdir -p "$work"
SECTIONS=" ${SECTIONS:-tests short long} "
if [[ $SECTIONS == *" tests "* ]]; then
  OUT="$work" SECTIONS="tests" TEST_TIMEOUT="${TEST_TIMEOUT:-200}" bash scripts/dev/release_check.sh
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$work/machine.txt"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/blossom_site"
unset TRITON_INTERPRET
if [[ $SECTIONS == *" short "* ]]; then
  eval "short_rows=(${SHORT_ROWS:-sdpa \"sdpa 6bb0aba\" \"sdpa rows=64\" triton full/sdpa})"
  # shellcheck disable=SC2086
  timeout 200 python scripts/dev/sdpa_cuda_ab.py --lengths ${SHORT_LENGTHS:-200 384 512} --rounds "${ROUNDS:-9}" \
    --rows "${short_rows[@]}" --out "$work/sdpa_cuda_ab_short.json" 2>&1 | grep -v Warning
fi
if [[ $SECTIONS == *" long "* ]]; then
  # shellcheck disable=SC2086
  timeout 200 python scripts/dev/sdpa_cuda_ab.py --lengths ${LONG_LENGTHS:-768 896 1024} --rounds "${ROUNDS:-9}" \
    --rows "sdpa dense" "sdpa sparse" triton --out "$work/sdpa_cuda_ab_long.json" 2>&1 | grep -v Warning
fi
tar -czf "$OUT/results.tar.gz" -C "$work" .
