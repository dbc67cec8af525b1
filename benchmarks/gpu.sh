#!/usr/bin/env bash
# The GPU check of issue 14 (deliverable 7), one prepared script, under 8 minutes on one H200-class GPU:
#   1. the `tiny` study end to end on CUDA (`emd reproduce --preset tiny -p device cuda`), its wall time and status;
#   2. EMD training images/s at 299 px (bf16, channels_last) beside timm's bare xception65 train step, with achieved
#      FLOP/s and their ratio (benchmarks/gpu_throughput.py);
#   3. `emd detect` frames/s on a 720p clip (benchmarks/detect_throughput.py).
# Results go to OUT (default results/benchmarks), merged under the device's name; the log of each step to OUT/logs.
#
#   bash benchmarks/gpu.sh [OUT]                      # on a GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh /tmp/o  # CPU smoke test of the script itself (tests/test_gpu_script.py)
#
# Settings (environment): DEVICE (default cuda), PYTHON (default python), QUICK=1 (tiny sizes, no study: the CPU
# smoke test), CLIP (a 720p video for step 3; default ffpp-mini's 004.mp4 under ../shared, and when that is absent a
# clip of the tiny study's synthetic videos, each frame scaled to 720x720 in the middle of a 1280x720 frame), and the
# seconds each step may take: TINY_TIMEOUT (default 270), THROUGHPUT_TIMEOUT (120), DETECT_TIMEOUT (90; the clip's
# first 100 frames, the default and default-fast sampling, each beside its bare loop), together under 8 minutes.
# A failing step is recorded in OUT/gpu_run.json with its exit status and the script carries on; it exits 1 when any
# step failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/benchmarks}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python}"
QUICK="${QUICK:-0}"
TINY_TIMEOUT="${TINY_TIMEOUT:-270}"
THROUGHPUT_TIMEOUT="${THROUGHPUT_TIMEOUT:-120}"
DETECT_TIMEOUT="${DETECT_TIMEOUT:-90}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT/logs"
export MPLBACKEND=Agg PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

declare -A STATUS SECONDS_TAKEN
step() {  # step NAME SECONDS COMMAND...: run with that timeout, log to OUT/logs/NAME.log, record status and seconds
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "[gpu.sh] $name: $*" >&2
  timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  STATUS[$name]=$?
  SECONDS_TAKEN[$name]=$((SECONDS - t0))
  echo "[gpu.sh] $name: exit ${STATUS[$name]} after ${SECONDS_TAKEN[$name]} s" >&2
}

if [ "$QUICK" = 1 ]; then
  step throughput "$THROUGHPUT_TIMEOUT" "$PYTHON" benchmarks/gpu_throughput.py --device "$DEVICE" --image-size 64 --batch 2 \
    --encoder xception41 --timm-model xception41 --esr-branches 2 --steps 1 --rounds 1 --loop-batches 1 \
    --out "$OUT/gpu_throughput.json"
else
  step tiny_study "$TINY_TIMEOUT" "$PYTHON" -m emdlib.cli reproduce --preset tiny -p device "$DEVICE" \
    --data-root "$WORK/data" --results "$WORK/results"
  step throughput "$THROUGHPUT_TIMEOUT" "$PYTHON" benchmarks/gpu_throughput.py --device "$DEVICE" --out "$OUT/gpu_throughput.json"
  CLIP="${CLIP:-../shared/data/ffpp-mini/original_sequences/youtube/c23/videos/004.mp4}"
  if [ ! -f "$CLIP" ]; then  # no shared data on this machine: the tiny study's synthetic clips, upscaled to 720p
    CLIP="$WORK/clip720.mp4"
    step make_clip "$DETECT_TIMEOUT" "$PYTHON" - "$WORK/data/tiny" "$CLIP" <<'EOF'
import sys
from pathlib import Path

import cv2
import numpy as np

from emdlib.data.video import read_frames, write_video

videos = sorted(Path(sys.argv[1]).glob("ffpp/original_sequences/youtube/c23/videos/*.mp4"))
if not videos:
    sys.exit(f"{sys.argv[1]}: the tiny study left no pristine c23 videos to make a clip from")
frames = []
for v in videos:
    for f in read_frames(v).values():
        canvas = np.zeros((720, 1280, 3), np.uint8)
        canvas[:, 280:1000] = cv2.resize(f, (720, 720), interpolation=cv2.INTER_LINEAR)
        frames.append(canvas)
write_video(sys.argv[2], frames[:300], fps=25)
EOF
  fi
  step detect "$DETECT_TIMEOUT" "$PYTHON" benchmarks/detect_throughput.py --device "$DEVICE" --video "$CLIP" --frames 100 \
    --settings default default-fast --models emd mesonet \
    --out "$OUT/detect_throughput.json"
fi

failed=0
record="{\"device_requested\": \"$DEVICE\", \"quick\": $QUICK, \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null)\", \"steps\": {"
sep=""
for name in "${!STATUS[@]}"; do
  record+="$sep\"$name\": {\"exit\": ${STATUS[$name]}, \"seconds\": ${SECONDS_TAKEN[$name]}}"
  sep=", "
  [ "${STATUS[$name]}" -ne 0 ] && failed=1
done
record+="}}"
printf '%s\n' "$record" > "$OUT/gpu_run.json.tmp" && mv "$OUT/gpu_run.json.tmp" "$OUT/gpu_run.json"
exit $failed
