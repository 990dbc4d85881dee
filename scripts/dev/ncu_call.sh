#!/usr/bin/env bash
# Nsight Compute of the operator's kernels at one L (scripts/dev/ncu_op.py), if ncu is on the machine. Knobs: NCU_LENGTH,
# NCU_KERNELS (regex), NCU_VARIANT. Writes $OUT/ncu_L.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
unset TRITON_INTERPRET
ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -z "$ncu_bin" ]; then echo "ncu: not found"; exit 0; fi
L=${NCU_LENGTH:-1024}
timeout "${NCU_TIMEOUT:-150}" "$ncu_bin" --profile-from-start off --kernel-name "regex:${NCU_KERNELS:-tile_kernel|select_kernel}" \
  --launch-count 8 --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --section SchedulerStats python scripts/dev/ncu_op.py --length "$L" --variant "${NCU_VARIANT:-base}" \
  > "$OUT/ncu_$L.txt" 2>&1
echo "ncu: exit $?"; grep -E "^  [a-z_]+kernel|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issue Slots Busy|No Eligible|Duration|Compute \(SM\) Throughput|Memory Throughput|Block Limit Reg" "$OUT/ncu_$L.txt" | head -80
