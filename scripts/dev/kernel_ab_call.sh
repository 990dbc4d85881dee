#!/usr/bin/env bash
# One GPU call for Triton kernel work: the GPU tests of the triton backend (release_check.sh's "tests" section,
# TESTS=triton: parity, CUDA graphs, fused losses), then scripts/dev/kernel_ab.py (this checkout's kernels against
# the baseline package in .gpu/kb/kernel_base, interleaved in one process: operator, layer and model rows, full/sdpa
# beside them), then optionally the geometry sweep of triton_tuning.py. Everything under $OUT (tarred).
# Knobs: SECTIONS ("tests ab sweep crossover"), TEST_TIMEOUT, AB_TIMEOUT, LENGTHS, MODEL_LENGTHS, ROUNDS, AB_SECTIONS,
# SWEEP_VARIANTS, SWEEP_LENGTHS.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
work="$OUT/r"
mkdir -p "$work"
SECTIONS=" ${SECTIONS:-tests ab} "
if [[ $SECTIONS == *" tests "* ]]; then
  OUT="$work" SECTIONS="tests" TESTS="${TESTS:-triton}" TEST_TIMEOUT="${TEST_TIMEOUT:-200}" bash scripts/dev/release_check.sh
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$work/machine.txt"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/blossom_site"
unset TRITON_INTERPRET
if [[ $SECTIONS == *" ab "* ]]; then
  # shellcheck disable=SC2086
  timeout "${AB_TIMEOUT:-240}" python scripts/dev/kernel_ab.py --base .gpu/kb --out "$work/kernel_ab.jsonl" \
    --sections ${AB_SECTIONS:-op layer model} --lengths ${LENGTHS:-200 512 1024 1536} \
    --model-lengths ${MODEL_LENGTHS:-512 1024} --rounds "${ROUNDS:-5}" > "$work/kernel_ab.log" 2>&1
  echo "kernel_ab: exit $?"
  python - "$work/kernel_ab.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["section"], r["L"], r["row"], r["ms"], r.get("gpu_ms", ""), r.get("peak_mib", ""))
PY
fi
if [[ $SECTIONS == *" sweep "* ]]; then
  # shellcheck disable=SC2086
  timeout "${SWEEP_TIMEOUT:-150}" python scripts/dev/triton_tuning.py --out-dir "$work" --sections sweep \
    --sweep-strategy auto --variants ${SWEEP_VARIANTS:-base q_bn16} --sweep-lengths ${SWEEP_LENGTHS:-512 1024} \
    > "$work/sweep.log" 2>&1
  echo "sweep: exit $?"; python - "$work/tuning.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("section") == "sweep":
        print(r["L"], r["strategy"], r["variant"], r.get("ms", r.get("error", "")[:200]),
              {k.split("_kernel")[0][-14:]: v for k, v in r.get("kernels", {}).items()})
PY
fi
if [[ $SECTIONS == *" crossover "* ]]; then
  # shellcheck disable=SC2086
  timeout 120 python scripts/dev/triton_tuning.py --out-dir "$work" --sections crossover \
    --cross-lengths ${CROSS_LENGTHS:-2048} > "$work/crossover.log" 2>&1
  echo "crossover: exit $?"; grep -o '"L": [0-9]*, "strategy": "[a-z]*", "variant": "[a-z]*", "ms": [0-9.]*' "$work/tuning.jsonl" | grep -v '"sweep"'
fi
tar -czf "$OUT/results.tar.gz" -C "$work" .
