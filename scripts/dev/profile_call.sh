#!/usr/bin/env bash
# One GPU call of profiles (no wheels needed): the serving forward (torch.profiler + cProfile) of the dense and the
# BlossomRec model, and one layer's fwd+bwd per op. Knobs: INF_LENGTHS, LAYER_LENGTHS. Writes under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT/p"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/p/machine.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/p/machine.txt"
timeout 200 python scripts/dev/profile_inference.py --lengths ${INF_LENGTHS:-200 1024} --rows full:sdpa blossom:triton \
  --cprofile --out "$OUT/p/profile_inference.txt" > "$OUT/p/inference.log" 2>&1
echo "profile_inference: exit $?"; grep "^===" "$OUT/p/profile_inference.txt"
timeout 150 python scripts/dev/triton_tuning.py --out-dir "$OUT/p" --sections profile-layer \
  --profile-lengths ${LAYER_LENGTHS:-512 1024} > "$OUT/p/layer.log" 2>&1
echo "profile-layer: exit $?"; tail -n 3 "$OUT/p/layer.log"
tar -C "$OUT" -czf "$OUT/profile.tgz" p && rm -rf "$OUT/p"
