#!/usr/bin/env bash
# ML-1M training epoch time, BlossomRec (default GPU backend: triton) vs attention_type="full" (sdpa: FlashAttention),
# one after the other in one call on one GPU, window 200, validation by full ranking after every epoch.
# Needs $BLOSSOM_DATA_DIR with ml-1m. EXTRA: more train options for both (e.g. "--loss liger"). Writes rec_<type>.json, train_<type>.log and epoch_times.md under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for type in blossom full; do
  timeout "${RUN_TIMEOUT:-150}" python -m blossom_hf train --dataset ml-1m --max-history-length 200 \
    --attention-type "$type" --epochs "${EPOCHS:-5}" --eval-protocols full --seed 1 --no-progress \
    --output-dir "/tmp/epoch_times_$type" --overwrite-output-dir --json ${EXTRA:-} > "$OUT/rec_$type.json" 2> "$OUT/train_$type.log"
  echo "$type: exit $?"
done
python - "$OUT" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
rows = []
for kind in ("blossom", "full"):
    try:
        record = json.loads((out / f"rec_{kind}.json").read_text())
    except ValueError as error:
        rows.append(f"| {kind} | failed: {error} | | | |")
        continue
    epochs = record.get("epochs") or []
    train = [e["epoch_train_seconds"] for e in epochs if e.get("epoch_train_seconds") is not None]
    evals = [e["eval_seconds"] for e in epochs if e.get("eval_seconds") is not None]
    backend = (record.get("model_config") or {}).get("attn_implementation") or record.get("device")
    med = lambda xs: statistics.median(xs[1:] or xs) if xs else float("nan")  # noqa: E731  (epoch 1 compiles)
    rows.append(f"| {kind} ({backend}) | {len(train)} | {med(train):.2f} | {med(evals):.2f} | "
                f"{', '.join(f'{x:.2f}' for x in train)} |")
text = ("| attention (backend) | epochs | median train s/epoch (epochs 2+) | median validation s | train s per epoch |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows))
(out / "epoch_times.md").write_text(text + "\n")
print(text)
PY
