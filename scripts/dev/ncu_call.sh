#!/usr/bin/env bash
# Nsight Compute of the operator's kernels at one L (scripts/dev/ncu_op.py), if ncu is on the machine. Knobs: NCU_LENGTH,
# NCU_KERNELS (regex), NCU_VARIANT, NCU_STRATEGY, NCU_STALLS=1 (adds the stall reasons per issued instruction and the
# pipe utilisation: which unit, if any, bounds the kernel). Writes $OUT/ncu_L.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
unset TRITON_INTERPRET
ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [ -z "$ncu_bin" ]; then echo "ncu: not found"; exit 0; fi
L=${NCU_LENGTH:-1024}
extra=()
if [ "${NCU_STALLS:-0}" = 1 ]; then
  stalls=""
  for r in long_scoreboard short_scoreboard math_pipe_throttle mio_throttle lg_throttle wait barrier not_selected \
           no_instruction dispatch_stall branch_resolving selected tex_throttle membar drain sleeping; do
    stalls="$stalls,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
  done
  pipes="sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active"
  pipes="$pipes,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"
  pipes="$pipes,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum"
  extra=(--metrics "${stalls#,},$pipes")
fi
timeout "${NCU_TIMEOUT:-150}" "$ncu_bin" --profile-from-start off --kernel-name "regex:${NCU_KERNELS:-tile_kernel|select_kernel}" \
  --launch-count 8 --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --section SchedulerStats "${extra[@]}" python scripts/dev/ncu_op.py --length "$L" --variant "${NCU_VARIANT:-base}" \
  --strategy "${NCU_STRATEGY:-auto}" \
  > "$OUT/ncu_$L.txt" 2>&1
echo "ncu: exit $?"; grep -E "^  [a-z_]+kernel|Achieved Occupancy|Theoretical Occupancy|Registers Per|Issue Slots Busy|No Eligible|Duration|Compute \(SM\) Throughput|Memory Throughput|Block Limit Reg|stalled|pipe_|inst_executed" "$OUT/ncu_$L.txt" | head -160
