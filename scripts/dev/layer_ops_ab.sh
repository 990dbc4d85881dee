#!/usr/bin/env bash
# On one CUDA GPU, in one call: the GPU tests of the Triton backend and the layer (tests/test_triton_gpu.py,
# tests/test_cuda_graphs.py), then the ops-ab section of scripts/dev/triton_tuning.py (layer, model and inference
# rows with the fused layer ops on and off, full/sdpa beside them) once with a baseline checkout's package
# (BASE: a folder holding that checkout's blossom_hf/, e.g. `git archive <commit> blossom_hf | tar -x -C BASE`)
# and once with this checkout's, each in its own process. Writes under $OUT.
# Knobs: SECTIONS ("tests ab"), BASE, TEST_TIMEOUT, AB_SECTIONS (triton_tuning.py sections, "ops-ab"), AB_ARGS
# (extra triton_tuning.py arguments), BASE_ARGS (appended for the baseline process, e.g. "--ab-variants fused").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
SECTIONS=" ${SECTIONS:-tests ab} "
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/machine.txt"
PYTHONPATH="$PWD" python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', \
triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/machine.txt"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if [[ $SECTIONS == *" tests "* ]]; then
  stamp tests
  PYTHONPATH="$PWD" BLOSSOM_PARITY_JSON="$OUT/parity.jsonl" timeout "${TEST_TIMEOUT:-200}" python -m pytest -m gpu -q \
    -p no:cacheprovider -rfE tests/test_triton_gpu.py tests/test_cuda_graphs.py > "$OUT/gpu_tests.log" 2>&1
  echo "GPU tests: exit $?"; tail -n 8 "$OUT/gpu_tests.log"
fi
if [[ $SECTIONS == *" ab "* ]]; then
  trees=("new:$PWD")
  [ -n "${BASE:-}" ] && trees=("base:$BASE" "new:$PWD")
  for entry in "${trees[@]}"; do
    stamp "ops-ab ${entry%%:*}"
    # shellcheck disable=SC2086
    PYTHONPATH="${entry#*:}" python scripts/dev/triton_tuning.py --sections ${AB_SECTIONS:-ops-ab} --no-compile \
      --tag "${entry%%:*}" --out-dir "$OUT" ${AB_ARGS:-} $([ "${entry%%:*}" = base ] && echo "${BASE_ARGS:-}") \
      > "$OUT/ab_${entry%%:*}.log" 2>&1
    echo "ops-ab ${entry%%:*}: exit $?"; tail -n 3 "$OUT/ab_${entry%%:*}.log"
  done
fi
stamp done
