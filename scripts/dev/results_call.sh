#!/usr/bin/env bash
# One GPU call's worth of result runs, side by side on ONE GPU, every run ending cleanly (with its record) before
# the call's time is up. For a device that is not kept between calls: nothing but $OUT survives, so each run is
# given a wall-clock deadline (blossom-hf train --time-limit-at) a little before the end of the call; a run still
# improving at that point stops with capped=true in its metrics.json, its best epoch so far evaluated.
#
#   OUT=/path/to/out RUN_GROUPS="length" CALL_SECONDS=570 bash scripts/dev/results_call.sh
#
# Groups (RUN_GROUPS, space-separated, launched in this order):
#   length   ML-1M, windows $LENGTH_WINDOWS (50 200 512 1024 2048) x {blossom (triton), full (sdpa)} x seeds $SEEDS
#   paper    RecBole-style prefix examples at window 50, early stopping on validation uni100 NDCG@10:
#            ML-1M seeds $SEEDS, Beauty and Video Games seed 1, both attention types
#   amazon   Beauty and Video Games, windows 50 and 200, seeds $SEEDS, both attention types, default protocol
#   tiny     a CPU check of this script: ML-100K (or $TINY_DATASET), window 50, 2 epochs, blossom + full, seed 1
#
# Every run: patience $PATIENCE (15) on the protocol's validation NDCG@10, at most $EPOCHS (300) epochs, fp32
# ranking (blossom_hf.trainer.full_precision_forward), test metrics of the best validation epoch.
#
# Environment: CALL_SECONDS (the time this script may take, from its start; default 570), FINISH_SECONDS (kept for
# the final ranking, the record and the archive; default 75), BLOSSOM_DATA_DIR (the datasets), WHEEL_DIR (wheels to
# install first, e.g. `datasets` where it is missing), BLOSSOM_HF_REVISION (the git commit of a copy without .git),
# EXTRA (more options for every run), MAX_PARALLEL (default: all runs at once), DEVICE_ARGS (e.g. "--cpu"),
# NAME_FILTER (an extended regex: only the runs whose names match), MIN_RUN_SECONDS (no run starts with less left).
#
# Before launching: the CUDA MPS daemon is started when nvidia-cuda-mps-control exists and a CUDA client then works
# (logged either way; without it the processes time-slice the GPU), every dataset is read once (the parsed-table
# cache), and one 2-step BlossomRec run compiles the Triton kernels into the shared cache.
# Under $OUT: driver.log, and records.tar.gz with every run's metrics.json, train.log and run_arguments.json (runs
# killed before writing metrics.json keep their last checkpoint's trainer_state.json), gpu.txt and the GPU samples;
# never checkpoints or weights.
set -uo pipefail
OUT=${OUT:?set OUT to an output folder}
START=$(date +%s)
CALL_SECONDS=${CALL_SECONDS:-570}
FINISH_SECONDS=${FINISH_SECONDS:-75}
RUN_GROUPS=${RUN_GROUPS:-length}
SEEDS=${SEEDS:-"1 2 3"}
LENGTH_WINDOWS=${LENGTH_WINDOWS:-"50 200 512 1024 2048"}
EPOCHS=${EPOCHS:-300}
PATIENCE=${PATIENCE:-15}
EXTRA=${EXTRA:-}
DEVICE_ARGS=${DEVICE_ARGS:-}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d)}
RUNS=$WORK/runs
mkdir -p "$RUNS"
LOG=$OUT/driver.log
stamp() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

if [[ -n "${WHEEL_DIR:-}" ]]; then
    SITE=$WORK/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEEL_DIR"/*.whl \
        && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} && stamp "installed $(ls "$WHEEL_DIR" | tr '\n' ' ')"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1
# many processes on one GPU: return freed blocks instead of keeping large fragmented reservations
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export BLOSSOM_HF_REVISION=${BLOSSOM_HF_REVISION:-$(cat REVISION 2>/dev/null || true)}
stamp "revision ${BLOSSOM_HF_REVISION:-unknown}; groups: $RUN_GROUPS; call budget ${CALL_SECONDS}s; $(nproc) cores"
{ nvidia-smi || true; python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'transformers', transformers.__version__, 'triton', triton.__version__)" || true; } \
    > "$WORK/gpu.txt" 2>&1

# ---- MPS: several processes' small kernels share the GPU (else: plain time-slicing) -----------------------------
MPS=off
if command -v nvidia-cuda-mps-control > /dev/null && [[ -z "$DEVICE_ARGS" ]]; then
    export CUDA_MPS_PIPE_DIRECTORY=$WORK/mps-pipe CUDA_MPS_LOG_DIRECTORY=$WORK/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d >> "$LOG" 2>&1 && python3 -c "import torch; torch.ones(1, device='cuda').sum().item()" \
        >> "$LOG" 2>&1; then
        MPS=on
        stamp "CUDA MPS daemon started and a CUDA client works: runs share the GPU through MPS"
    else
        stamp "CUDA MPS did not work (see above): stopping it; runs time-slice the GPU"
        echo quit | nvidia-cuda-mps-control >> "$LOG" 2>&1 || true
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
else
    stamp "nvidia-cuda-mps-control not found (or CPU run): runs time-slice the device"
fi

# ---- the run list ----------------------------------------------------------------------------------------------
declare -a NAMES=() ARGS=()
add() {  # name, then train options; NAME_FILTER (an extended regex) keeps only the matching runs
    [[ -n "${NAME_FILTER:-}" && ! $1 =~ $NAME_FILTER ]] && return 0
    NAMES+=("$1"); shift; ARGS+=("$*")
}
backend() { [[ $1 == blossom ]] && echo triton || echo sdpa; }
eval_batch() { (($1 >= 1024)) && echo 256 || echo 1024; }
datasets_needed=""
for group in $RUN_GROUPS; do
    case $group in
    length)
        datasets_needed+=" ml-1m"
        for window in $LENGTH_WINDOWS; do for seed in $SEEDS; do for att in blossom full; do
            add "ml1m-L$window-$att-s$seed" --dataset ml-1m --max-history-length "$window" --attention-type "$att" \
                --attn-implementation "$(backend $att)" --seed "$seed" --eval-batch-size "$(eval_batch "$window")"
        done; done; done ;;
    paper)
        datasets_needed+=" ml-1m beauty video-games"
        for spec in "ml-1m ml1m $SEEDS" "beauty beauty 1" "video-games video-games 1"; do
            set -- $spec; dataset=$1; short=$2; shift 2
            for seed in "$@"; do for att in blossom full; do
                add "$short-L50-$att-recbole-s$seed" --dataset "$dataset" --max-history-length 50 --attention-type "$att" \
                    --attn-implementation "$(backend $att)" --seed "$seed" --example-style recbole \
                    --early-stopping-metric uni100_ndcg@10
            done; done
        done ;;
    amazon)
        datasets_needed+=" beauty video-games"
        for dataset in beauty video-games; do for window in 50 200; do for seed in $SEEDS; do for att in blossom full; do
            add "$dataset-L$window-$att-s$seed" --dataset "$dataset" --max-history-length "$window" --attention-type "$att" \
                --attn-implementation "$(backend $att)" --seed "$seed"
        done; done; done; done ;;
    tiny)
        datasets_needed+=" ${TINY_DATASET:-ml-100k}"
        for att in blossom full; do
            add "tiny-L50-$att-s1" --dataset "${TINY_DATASET:-ml-100k}" --max-history-length 50 --attention-type "$att" \
                --attn-implementation "$( [[ -n $DEVICE_ARGS ]] && echo sdpa || backend $att)" --seed 1 --hidden-size 32
        done ;;
    *) stamp "unknown group $group (length, paper, amazon, tiny)"; exit 2 ;;
    esac
done
stamp "${#NAMES[@]} runs: ${NAMES[*]}"

# ---- read every dataset once, compile the Triton kernels once ---------------------------------------------------
prep_pids=()
for dataset in $(echo "$datasets_needed" | tr ' ' '\n' | sort -u); do
    python3 - "$dataset" >> "$WORK/prepare.log" 2>&1 <<'EOF' &
import sys, time
from blossom_hf.commands.train import build_parser
started = time.perf_counter()
data_args = build_parser().parse(["--dataset", sys.argv[1], "--output-dir", "unused"])[0]
data = data_args.to_spec().load()  # exactly what `blossom-hf train --dataset NAME` reads
print(f"prepared {sys.argv[1]}: {data.n_users} users, {data.n_items} items in {time.perf_counter() - started:.1f} s")
EOF
    prep_pids+=($!)
done
if [[ -z "$DEVICE_ARGS" && " $RUN_GROUPS " != *" tiny "* ]]; then
    python3 -m blossom_hf train --dataset ml-1m --max-history-length 200 --attention-type blossom \
        --attn-implementation triton --max-steps 2 --eval-protocols full --no-progress \
        --output-dir "$WORK/warmup" >> "$WORK/prepare.log" 2>&1 &
    prep_pids+=($!)
fi
for pid in "${prep_pids[@]}"; do wait "$pid" || stamp "a preparation step failed (see prepare.log)"; done
grep -h "prepared" "$WORK/prepare.log" | tee -a "$LOG"
stamp "prepared"

# ---- launch: every run gets the same deadline -------------------------------------------------------------------
DEADLINE=$((START + CALL_SECONDS - FINISH_SECONDS))
KILL_AT=$((START + CALL_SECONDS - 20))
stamp "training deadline $(date -u -d "@$DEADLINE" +%H:%M:%S) UTC ($((DEADLINE - $(date +%s))) s from now); MPS $MPS"
if command -v nvidia-smi > /dev/null && [[ -z "$DEVICE_ARGS" ]]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$WORK/gpu_samples.csv" 2>&1 &
    smi=$!
fi
MAX_PARALLEL=${MAX_PARALLEL:-${#NAMES[@]}}
declare -A PIDS=()
running=0
for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}
    while ((running >= MAX_PARALLEL)); do wait -n; running=$((running - 1)); done
    if (($(date +%s) >= DEADLINE - ${MIN_RUN_SECONDS:-60})); then stamp "not started (no time left): $name"; continue; fi
    mkdir -p "$RUNS/$name"
    # shellcheck disable=SC2086
    python3 -m blossom_hf train ${ARGS[$i]} --epochs "$EPOCHS" --patience "$PATIENCE" --time-limit-at "$DEADLINE" \
        --no-progress --output-dir "$RUNS/$name" $DEVICE_ARGS $EXTRA > "$RUNS/$name/train.log" 2>&1 &
    PIDS[$name]=$!
    running=$((running + 1))
done
stamp "launched ${#PIDS[@]} runs"

# wait for all, killing stragglers at KILL_AT (their records are lost; their train.log and trainer_state stay)
while :; do
    alive=0
    for name in "${!PIDS[@]}"; do kill -0 "${PIDS[$name]}" 2> /dev/null && alive=$((alive + 1)); done
    ((alive == 0)) && break
    if (($(date +%s) >= KILL_AT)); then
        for name in "${!PIDS[@]}"; do
            if kill -0 "${PIDS[$name]}" 2> /dev/null; then
                stamp "KILLED (past the call's end): $name"
                kill "${PIDS[$name]}" 2> /dev/null
            fi
        done
        sleep 3
        break
    fi
    sleep 5
done
finished=0 capped=0 failed=0
for name in "${NAMES[@]}"; do
    dir=$RUNS/$name
    [[ -d $dir ]] || continue
    if [[ -f $dir/metrics.json ]]; then
        finished=$((finished + 1))
        line=$(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(f\"epochs {r.get('epochs_run')} best {r['best'].get('epoch')} capped {r.get('capped')} \"
      f\"test full NDCG@10 {r['test']['full']['ndcg@10']:.4f} uni100 {r['test'].get('uni100', {}).get('ndcg@10', 0):.4f}\")
" "$dir/metrics.json")
        [[ $line == *"capped True"* ]] && capped=$((capped + 1))
        stamp "done $name: $line"
    else
        failed=$((failed + 1))
        last=$(ls -d "$dir"/checkpoint-* 2> /dev/null | sort -t- -k2 -n | tail -1)
        [[ -n $last && -f $last/trainer_state.json ]] && cp "$last/trainer_state.json" "$dir/trainer_state.json"
        stamp "NO RECORD $name: $(tail -2 "$dir/train.log" | tr '\n' ' ' | cut -c1-300)"
    fi
done
stamp "$finished runs wrote a record ($capped capped: deadline or epoch budget), $failed did not"
[[ -n "${smi:-}" ]] && kill "$smi" 2> /dev/null
if [[ $MPS == on ]]; then echo quit | nvidia-cuda-mps-control >> "$LOG" 2>&1 || true; fi
cp "$WORK/gpu.txt" "$WORK/prepare.log" "$LOG" "$RUNS/" 2> /dev/null
[[ -f $WORK/gpu_samples.csv ]] && cp "$WORK/gpu_samples.csv" "$RUNS/"
(cd "$RUNS" && tar czf "$OUT/records.tar.gz" --exclude='checkpoint-*' --exclude='best_model' --exclude='.staging' \
    --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='.blossom-hf.lock' .)
stamp "wrote $OUT/records.tar.gz ($(du -h "$OUT/records.tar.gz" | cut -f1))"
