#!/usr/bin/env bash
# One GPU call after a change to the sdpa backend's CUDA inference (the dense layout's causal query chunks,
# DENSE_QUERY_CHUNK_ROWS): every GPU test and `blossom-hf evaluate` per backend (release_check.sh's "tests" section),
# then on a quiet GPU: the host cost of a Triton launch against its argument count (triton_launch_cost.py), the sdpa
# inference layouts against triton at each chunk size (sdpa_layouts_vs_triton.py), and a profile of one Triton layer
# step (triton_tuning.py --sections profile-layer). Everything under $OUT, tarred into $OUT/results.tar.gz.
# Knobs: TEST_TIMEOUT, SHORT_LENGTHS, LONG_LENGTHS, CHUNK_ROWS, PROFILE_LENGTHS.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
work="$OUT/r"
mkdir -p "$work"
OUT="$work" SECTIONS="tests" TEST_TIMEOUT="${TEST_TIMEOUT:-240}" bash scripts/dev/release_check.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/blossom_site"
unset TRITON_INTERPRET
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
stamp launch-cost
timeout 60 python scripts/dev/triton_launch_cost.py --out "$work/launch_cost.json" 2>&1 | tee "$work/launch_cost.log"
stamp sdpa-short
# shellcheck disable=SC2086
timeout 200 python scripts/dev/sdpa_layouts_vs_triton.py --lengths ${SHORT_LENGTHS:-200 384 512} \
  --chunk-rows ${CHUNK_ROWS:-0 64 128 256} --no-sparse --out "$work/sdpa_chunks_short.json" 2>&1 \
  | tee "$work/sdpa_chunks_short.log" | grep -v Warning
stamp sdpa-long
# shellcheck disable=SC2086
timeout 150 python scripts/dev/sdpa_layouts_vs_triton.py --lengths ${LONG_LENGTHS:-640 768 1024} --chunk-rows 128 \
  --out "$work/sdpa_chunks_long.json" 2>&1 | tee "$work/sdpa_chunks_long.log" | grep -v Warning
stamp profile-layer
# shellcheck disable=SC2086
timeout 120 python scripts/dev/triton_tuning.py --out-dir "$work/profile" --sections profile-layer --no-compile \
  --profile-lengths ${PROFILE_LENGTHS:-512 1024} > "$work/profile.log" 2>&1
echo "profile-layer: exit $?"; grep -h '"profile-layer"' "$work"/profile/*.jsonl 2>/dev/null | cut -c1-300
stamp done
tar -czf "$OUT/results.tar.gz" -C "$work" .
