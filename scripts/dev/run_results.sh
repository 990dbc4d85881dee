#!/usr/bin/env bash
# Reproduce the project's result tables on ONE GPU: several trainings run in parallel on it.
# (For a device that is not kept between calls, use scripts/dev/results_call.sh: every run ends, with its record,
# before the call's deadline; it made the 2026-12-01 tables of docs/RESULTS.md.)
#
#   scripts/dev/run_results.sh OUTPUT_DIR [PARALLEL]
#
# Everything goes under OUTPUT_DIR: one folder per run (train.log, metrics.json, best_model/, checkpoints),
# gpu.txt, memory_ce*.json, RESULTS.md and summary.json (scripts/dev/collect_results.py). Re-running the
# same command skips finished runs and resumes interrupted ones from their last checkpoint.
#
# Groups (select with RUNS="..."; default: all but "recbole"):
#   ml1m       ML-1M, window 50, BlossomRec vs full attention, seeds $SEEDS (default 1 2 3)
#   ml1m-long  ML-1M, window 200, BlossomRec vs full attention, seeds $SEEDS
#   amazon     Beauty and Video Games, window 50, BlossomRec vs full attention, seeds $AMAZON_SEEDS (default 1)
#   ablation   ML-1M, window 50 and 200, BlossomRec without the LTIS straight-through gradient, seeds $SEEDS
#   recbole    ML-1M, window 50, the paper's RecBole-style prefix examples, early stopping on uni100 NDCG@10
#              (much slower: ~1M examples per epoch), BlossomRec vs full, seed 1
#   memory     peak memory of full vs chunked vs sampled cross-entropy on a synthetic 1M-item catalogue
#
# All runs: SASRec-style examples (except "recbole"), bf16 autocast, Adam lr 1e-3, patience 15 on
# validation full-ranking NDCG@10, test metrics of the best validation epoch under full ranking and uni100
# (negatives drawn once, seed 0/1), pessimistic ties. Model: d=128, 2 layers, 8 query / 2 kv heads, FFN 256,
# dropout 0.2 (the paper's setting). Extra options for every run: EXTRA="--attn-implementation triton".
set -euo pipefail

OUT=${1:?usage: scripts/dev/run_results.sh OUTPUT_DIR [PARALLEL]}
PARALLEL=${2:-${PARALLEL:-6}}
RUNS=${RUNS:-"ml1m ml1m-long amazon ablation memory"}
SEEDS=${SEEDS:-"1 2 3"}
AMAZON_SEEDS=${AMAZON_SEEDS:-"1"}
EPOCHS=${EPOCHS:-300}
PATIENCE=${PATIENCE:-15}
EXTRA=${EXTRA:-}
BLOSSOM_EXTRA=${BLOSSOM_EXTRA:-}      # extra options for BlossomRec runs only, e.g. "--attn-implementation triton"
GPUS=${GPUS:-}                        # e.g. "0 1 2 3": runs are spread round-robin over these devices
AMAZON_WINDOWS=${AMAZON_WINDOWS:-"50"}
TIME_LIMIT=${TIME_LIMIT:-}            # minutes per run (train.py --time-limit-minutes)

cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
{ nvidia-smi || true; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
    > "$OUT/gpu.txt" 2>&1

running=0
failed=0

run_one() {  # name, then train.py arguments
    local name=$1
    shift
    local dir="$OUT/$name"
    if [[ -f "$dir/metrics.json" ]]; then
        echo "[skip] $name (done)"
        return 0
    fi
    mkdir -p "$dir"
    local resume=()
    if compgen -G "$dir/checkpoint-*" > /dev/null; then
        resume=(--resume)
    fi
    local extra="$EXTRA"
    if [[ " $* " == *" --attention-type blossom "* ]]; then
        extra="$extra $BLOSSOM_EXTRA"
    fi
    if [[ -n "$TIME_LIMIT" ]]; then
        extra="$extra --time-limit-minutes $TIME_LIMIT"
    fi
    echo "[start] $name${CUDA_VISIBLE_DEVICES:+ on GPU $CUDA_VISIBLE_DEVICES}"
    # shellcheck disable=SC2086
    if python -m blossom_hf train "$@" --epochs "$EPOCHS" --patience "$PATIENCE" --no-progress \
        --output-dir "$dir" "${resume[@]}" $extra >> "$dir/train.log" 2>&1; then
        echo "[done] $name"
    else
        echo "[FAILED] $name (see $dir/train.log)"
        return 1
    fi
}

gpu_list=($GPUS)
launched=0
launch() {  # run in the background, at most $PARALLEL at a time
    if ((${#gpu_list[@]} > 0)); then
        CUDA_VISIBLE_DEVICES=${gpu_list[$((launched % ${#gpu_list[@]}))]} run_one "$@" &
    else
        run_one "$@" &
    fi
    launched=$((launched + 1))
    running=$((running + 1))
    if ((running >= PARALLEL)); then
        wait -n || failed=$((failed + 1))
        running=$((running - 1))
    fi
}

has_group() { [[ " $RUNS " == *" $1 "* ]]; }

if has_group ml1m; then
    for seed in $SEEDS; do
        for attention in blossom full; do
            launch "ml1m-L50-$attention-s$seed" --dataset ml-1m --max-history-length 50 \
                --attention-type "$attention" --seed "$seed"
        done
    done
fi
if has_group ml1m-long; then
    for seed in $SEEDS; do
        for attention in blossom full; do
            launch "ml1m-L200-$attention-s$seed" --dataset ml-1m --max-history-length 200 \
                --attention-type "$attention" --seed "$seed"
        done
    done
fi
if has_group amazon; then
    for dataset in beauty video-games; do
        for window in $AMAZON_WINDOWS; do
            for seed in $AMAZON_SEEDS; do
                for attention in blossom full; do
                    launch "$dataset-L$window-$attention-s$seed" --dataset "$dataset" --max-history-length "$window" \
                        --attention-type "$attention" --seed "$seed"
                done
            done
        done
    done
fi
if has_group ablation; then
    for window in ${ABLATION_WINDOWS:-50 200}; do
        for seed in $SEEDS; do
            launch "ml1m-L$window-blossom-no-straight-through-s$seed" --dataset ml-1m \
                --max-history-length "$window" --attention-type blossom --straight-through off --seed "$seed"
        done
    done
fi
if has_group recbole; then
    for attention in blossom full; do
        launch "ml1m-L50-$attention-recbole-style-s1" --dataset ml-1m --max-history-length 50 \
            --attention-type "$attention" --example-style recbole --early-stopping-metric uni100_ndcg@10 --seed 1
    done
fi

while ((running > 0)); do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
done

if has_group memory; then
    echo "[start] memory"
    python scripts/dev/memory_ce.py --device cuda --mode loss --items 1000000 --tokens 16384 \
        --output "$OUT/memory_ce_loss.json" > "$OUT/memory_ce_loss.txt" 2>&1 || echo "[FAILED] memory (loss)"
    python scripts/dev/memory_ce.py --device cuda --mode model --items 1000000 --batch-size 64 \
        --max-history-length 200 --output "$OUT/memory_ce_model.json" > "$OUT/memory_ce_model.txt" 2>&1 \
        || echo "[FAILED] memory (model)"
    cat "$OUT"/memory_ce_*.txt
fi

python scripts/dev/collect_results.py "$OUT" --output "$OUT/summary.json" > "$OUT/RESULTS.md"
cat "$OUT/RESULTS.md"
if ((failed > 0)); then
    echo "$failed run(s) failed; see the [FAILED] lines above" >&2
    exit 1
fi
