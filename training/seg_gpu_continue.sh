#!/usr/bin/env bash
# Continue a segmentation run on a GPU for a fixed number of minutes, export its last checkpoint and
# score the export on the real-CT references (when ../shared/data is there). Exact resume: the run's
# last.pt holds model, optimizer, LR plateau, AMP scaler, RNG states and the epoch/iteration counters.
#
#   training/seg_gpu_continue.sh RUN_DIR MINUTES EXPORT_DIR [VERSION]
#   DATA=/path/to/train/cache training/seg_gpu_continue.sh training/runs/seg_real 12 /tmp/export 2.1
#
# DATA: the training cases folder if it moved (synthetic.prepare npz + training.seg_real_cases npz in one
# folder). Larger batch and patches and DataLoader workers for the GPU; the LR is the run's own.
set -euo pipefail
RUN=${1:?run folder holding last.pt}
MINUTES=${2:?minutes to train}
EXPORT=${3:?folder for the exported card + weights}
VERSION=${4:-2.1}
PY=${PYTHON:-python}
test -f "$RUN/last.pt" || { echo "$RUN/last.pt: no checkpoint to continue" >&2; exit 2; }
EXTRA=()
if [ -n "${DATA:-}" ]; then EXTRA+=(--set "data=\"$DATA\""); fi
"$PY" -m training.train_segmentation --out "$RUN" --resume --max-minutes "$MINUTES" \
  --set device=cuda --set batch_size=8 --set 'patch=[64,96,96]' --set num_workers=14 --set threads=4 \
  --set iters_per_epoch=250 --set val_every_epochs=1 --set checkpoint_minutes=1.5 "${EXTRA[@]}"
"$PY" -m training.train_segmentation --out "$RUN" --export "$EXPORT" --export-which last \
  --set "version=\"$VERSION\"" --card-extra training/configs/wpunet_kidney_card.json
"$PY" -m training.references.score --model "$EXPORT/wpunet_kidney.json" --json "$EXPORT/real_ct_scores.json" || \
  echo "real-CT references not scored (../shared/data missing?)"
