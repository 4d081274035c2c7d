#!/usr/bin/env bash
# Continue tiny-wan-next's training (issue 20) on a lent GPU in one call, and bring its state back.
#
# Minutes of an H200 are hours of this project's CPU (0.136 s per step at batch 4 against ~3.5 s on one CPU
# thread; the GPU is launch-bound at batch 4, so this uses batch 16). It resumes from the committed slim state
# (models/tiny-wan-next/training_state.pt; the latent pool is re-encoded first, ~100 s), trains for MINUTES of
# wall time, and writes to $OUT the slim state split into 15 MB parts (the device returns files up to 16 MiB)
# and the run's log. Extra arguments go to `train_tiny_wan.py train` (e.g. --steps 20000 --lr-decay-steps 4000).
#
#   device:  bash scripts/gpu_train_tiny_wan.sh 8     (diffusers must be importable: carry its wheel; DEVICE=cpu
#            PYTHON=.venv/bin/python and a small --pool-size make a dry run here)
#   here:    cat <files_at>/slim.pt.part* > models/tiny-wan-next/training_state.pt
#            python scripts/train_tiny_wan.py export --out models/tiny-wan-next --checkpoint training_state.pt \
#                --to models/tiny-wan-next
#            cat <files_at>/log.jsonl >> .cache/tiny_wan_next/log.jsonl    # the device's rows carry "device"
set -euo pipefail
MINUTES=${1:?minutes of training}
shift
: "${OUT:?the device machine sets OUT}"
RUN=/tmp/tiny_wan_gpu
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" scripts/train_tiny_wan.py train --recipe tiny-wan-next --out "$RUN" --pool-size 1000 \
    --checkpoint-minutes 1000 --max-minutes "$MINUTES" --device "${DEVICE:-cuda}" --threads 8 --batch 16 \
    --resume models/tiny-wan-next/training_state.pt "$@"
"${PYTHON:-python3}" scripts/train_tiny_wan.py export --out "$RUN" --to "$RUN/export"  # writes the slim state too
split -b 15M -d "$RUN/export/training_state.pt" "$OUT/slim.pt.part"
cp "$RUN/log.jsonl" "$OUT/log.jsonl"
