#!/usr/bin/env bash
# One short GPU session, start to finish: check the GPU, time the paper configuration through the
# one inference path on a 512x512x300 CT, train both stages of the GPU demo recipe within a time
# budget, export the candidate (float16, small enough to copy back) and evaluate it on the
# validation phantoms. Everything that must outlive the machine lands in $OUT.
#
#   OUT=/path/to/results scripts/gpu-demo-weights.sh
#
# Environment (defaults in brackets):
#   OUT        where results go (required)
#   PY         the Python that has torch and the project's dependencies [python3]
#   S1_MIN     Stage 1 time budget in minutes, phantom generation included [3.5]
#   S2_MIN     Stage 2 time budget in minutes [3.5]
#   BENCH      1: run bench/segment.py first (paper config, 512x512x300) [1]
#   SHAPE      the CT size for the timing ["512 512 300"]
#   SET1/SET2  extra `--set key=value ...` overrides for Stage 1 / Stage 2 (tests use them for
#              a few-step run on CPU) [none]
#   VAL        the validation data of the last step [phantom:900:6]
#   RUNS       working folder for the runs [runs/gpu]
#
# On a machine whose Python lacks the project's dependencies (a bare GPU image with torch), put
# monai, nibabel, pydicom and jsonschema (with referencing, rpds-py, jsonschema-specifications)
# on PYTHONPATH first; the script adds the repository itself.
#
# The held-out figures (phantom:5000:8 and the real CTs of ../shared/data) are for the report,
# not for choosing: run them afterwards on the exported candidate, where ../shared exists.
set -euo pipefail
: "${OUT:?set OUT to the folder for the results}"
# Paths the caller gave relative to where it stands, resolved before moving to the repository.
OUT=$(realpath -ms "$OUT")
[ -n "${RUNS:-}" ] && RUNS=$(realpath -ms "$RUNS")
PY=${PY:-python3}
case "$PY" in */*) PY=$(realpath -ms "$PY") ;; esac
cd "$(dirname "$0")/.."

S1_MIN=${S1_MIN:-3.5}
S2_MIN=${S2_MIN:-3.5}
BENCH=${BENCH:-1}
SHAPE=${SHAPE:-512 512 300}
SET1=${SET1:-}
SET2=${SET2:-}
VAL=${VAL:-phantom:900:6}
RUNS=${RUNS:-runs/gpu}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[gpu-demo-weights $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }

log "device check"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/session.log"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
from model.mamba import mamba_ssm_available
print("mamba_ssm kernels:", mamba_ssm_available())
EOF

if [ "$BENCH" = 1 ]; then
  log "bench/segment.py on a ${SHAPE// /x} CT"
  # shellcheck disable=SC2086  # SHAPE is three numbers
  "$PY" bench/segment.py --shape $SHAPE --work "$RUNS/bench" --json "$OUT/segment.json" 2>&1 | tee -a "$OUT/session.log"
fi

log "Stage 1 (${S1_MIN} min)"
# shellcheck disable=SC2086  # SET1 is a list of key=value words
"$PY" -m training.cli stage1 --config config/train_stage1_gpu.yaml --resume none --time-budget "$S1_MIN" \
  --set run.out_dir="$RUNS/stage1" $SET1 > "$RUNS/stage1.log" 2>&1
log "Stage 2 (${S2_MIN} min)"
# shellcheck disable=SC2086
"$PY" -m training.cli stage2 --config config/train_stage2_gpu.yaml --init "$RUNS/stage1/final.pt" --resume none \
  --time-budget "$S2_MIN" --set run.out_dir="$RUNS/stage2" $SET2 > "$RUNS/stage2.log" 2>&1

log "export (float16) and validation ($VAL)"
"$PY" -m training.cli export --checkpoint "$RUNS/stage2/final.pt" --out "$OUT/candidate.pt" --half \
  --version dsm-small-demo-gpu >> "$OUT/session.log" 2>&1
"$PY" -m training.cli eval --checkpoint "$OUT/candidate.pt" --data "$VAL" --out "$RUNS/eval_val" \
  --overlays 0 > "$RUNS/eval_val.log" 2>&1
cp "$RUNS/eval_val/summary.json" "$OUT/eval_val_summary.json"
# A lent machine returns few files: the logs, curves and per-class health go back as one archive.
tar -czf "$OUT/training.tar.gz" -C "$RUNS" stage1.log stage2.log eval_val.log stage1/metrics.csv \
  stage1/channel_health.csv stage2/metrics.csv stage2/channel_health.csv stage2/summary.json eval_val/report.md
log "done: $(ls "$OUT" | tr '\n' ' ')"
