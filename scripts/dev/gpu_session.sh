#!/usr/bin/env bash
# The GPU session behind docs/RESULTS.md and the bundled checkpoints (the project's own result tooling, not a
# user command): smoke test, DDP demonstration, result runs, exports, CPU re-evaluation.
#
#   OUT=/path/to/output BLOSSOM_DATA_DIR=/path/to/datasets bash scripts/dev/gpu_session.sh
#
# Devices: SMOKE_GPU (default 0) for the smoke test, DDP_GPUS (default "0,1") for the DDP run, GPUS (default:
# every GPU nvidia-smi lists) for the result runs. WHEEL_DIR: a folder of dependency wheels to install first
# (for hosts without network access that lack a dependency).
#
# 1. smoke test: one epoch of BlossomRec with the fused Triton backend; BlossomRec runs use "triton" if it
#    passes, "sdpa" otherwise (said in the log, never silently);
# 2. the DDP demonstration: torchrun on 2 GPUs, no code change (ML-100K, 3 epochs);
# 3. scripts/dev/run_results.sh with the runs spread over $GPUS, each run capped at $TIME_LIMIT minutes;
# 4. the bundled checkpoints exported from seed-1 runs (blossom-hf export);
# 5. the Triton-trained ML-1M checkpoint evaluated on the CPU with the sdpa backend.
# Results are packed into a few archives under $OUT as they are ready.
set -uo pipefail
OUT=${OUT:?set OUT to an output folder}
cd "$(dirname "$0")/../.."
if [[ -n "${WHEEL_DIR:-}" ]]; then
    SITE=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEEL_DIR"/*.whl
    export PYTHONPATH=$SITE
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export BLOSSOM_DATA_DIR=${BLOSSOM_DATA_DIR:?set BLOSSOM_DATA_DIR to the folder holding the datasets}
SMOKE_GPU=${SMOKE_GPU:-0}
DDP_GPUS=${DDP_GPUS:-0,1}
GPUS=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ')}
export PYTHONUNBUFFERED=1
R=$OUT/runs
mkdir -p "$R"
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start)) s] $*"; }

stamp "smoke test of the triton backend"
SMOKE=$(mktemp -d)
if CUDA_VISIBLE_DEVICES=$SMOKE_GPU python3 -m blossom_hf train --dataset ml-100k --max-history-length 200 \
    --attention-type blossom --attn-implementation triton --epochs 1 --no-progress \
    --output-dir "$SMOKE/smoke-triton" > "$OUT/smoke_triton.log" 2>&1; then
    BLOSSOM_EXTRA="--attn-implementation triton"
    stamp "triton smoke test passed: BlossomRec runs train with attn_implementation=triton"
else
    BLOSSOM_EXTRA=""
    stamp "TRITON SMOKE TEST FAILED (see smoke_triton.log): BlossomRec runs train with sdpa"
fi

stamp "DDP demonstration on GPUs $DDP_GPUS"
CUDA_VISIBLE_DEVICES=$DDP_GPUS torchrun --standalone --nproc_per_node 2 -m blossom_hf train --dataset ml-100k \
    --max-history-length 50 --epochs 3 --no-progress --output-dir "$R/ddp-ml100k-2gpus" \
    > "$OUT/ddp_2gpus.log" 2>&1 &
ddp=$!

stamp "result runs"
GPUS="$GPUS" TIME_LIMIT=${TIME_LIMIT:-6} EPOCHS=${EPOCHS:-200} PATIENCE=${PATIENCE:-15} \
    RUNS=${RUNS:-"ml1m ml1m-long amazon ablation memory"} AMAZON_WINDOWS=${AMAZON_WINDOWS:-"50 200"} \
    ABLATION_WINDOWS=${ABLATION_WINDOWS:-200} BLOSSOM_EXTRA="$BLOSSOM_EXTRA" \
    bash scripts/dev/run_results.sh "$R" "${PARALLEL:-24}" > "$OUT/run_results.log" 2>&1
stamp "result runs finished (exit $?)"
wait "$ddp"; stamp "DDP run finished (exit $?)"
tail -5 "$OUT/ddp_2gpus.log"
(cd "$OUT" && tar czf results.tar.gz --exclude='checkpoint-*' --exclude='best_model' --exclude='*.safetensors' runs \
    run_results.log smoke_triton.log ddp_2gpus.log)

stamp "exports"
for spec in "ml1m-L200-blossom-s1 blossomrec-ml1m" "beauty-L50-blossom-s1 blossomrec-beauty" \
            "video-games-L50-blossom-s1 blossomrec-video-games"; do
    set -- $spec
    python3 -m blossom_hf export "$R/$1" "$OUT/model_cards/$2" --repo-id "blossom-hf/$2" \
        >> "$OUT/export.log" 2>&1 || echo "export of $1 failed" >> "$OUT/export.log"
done
(cd "$OUT" && tar czf cards_ml1m_beauty.tar.gz model_cards/blossomrec-ml1m model_cards/blossomrec-beauty export.log)
(cd "$OUT" && tar czf cards_video_games.tar.gz model_cards/blossomrec-video-games)

stamp "triton-trained ML-1M model evaluated with sdpa on the CPU"
CUDA_VISIBLE_DEVICES="" python3 -m blossom_hf evaluate --model "$R/ml1m-L200-blossom-s1/best_model" --dataset ml-1m \
    --device cpu --attn-implementation sdpa --no-progress --output "$OUT/ml1m_triton_model_cpu_sdpa_eval.json" \
    > "$OUT/cpu_eval.log" 2>&1
stamp "CPU evaluation finished (exit $?)"
(cd "$OUT" && tar czf cpu_eval.tar.gz ml1m_triton_model_cpu_sdpa_eval.json cpu_eval.log)
rm -rf "$OUT/runs" "$OUT/model_cards"
stamp "done"
