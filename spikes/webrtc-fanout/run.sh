#!/usr/bin/env bash
# Rerun the fan-out spike: builds both stacks and runs every (stack, mode, N) combination.
# Usage: [REPEAT=1] [OUT=/tmp/fanout-results.txt] spikes/webrtc-fanout/run.sh [secs=15] [Ns="1 20 50"]
# Output: one SUMMARY line per run (stdout) + full per-receiver JSON in $OUT.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-15}
NS=${2:-"1 20 50"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/spike-target}
OUT=${OUT:-/tmp/fanout-results.txt}
H264=/tmp/spike.h264
if [ ! -s "$H264" ]; then
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc2=size=1280x720:rate=30 -t 10 \
    -c:v libx264 -profile:v baseline -pix_fmt yuv420p -b:v 2500k -g 60 \
    -bsf:v h264_mp4toannexb -f h264 "$H264"
fi
(cd v017 && nice -n 19 cargo build --release -q)
(cd v021 && nice -n 19 cargo build --release -q)
run() { # bin mode n
  echo "# $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
  "$CARGO_TARGET_DIR/release/$1" --n "$3" --mode "$2" --secs "$SECS" --warmup 3 --file "$H264" 2>/dev/null \
    | tee -a "$OUT" | grep SUMMARY
}
for _ in $(seq "${REPEAT:-1}"); do
for n in $NS; do
  run fanout-v017 shared "$n"
  run fanout-v017 per-peer "$n"
  run fanout-v017 rtp "$n"
  run fanout-v021 rtp "$n"
  run fanout-v021 per-peer "$n"
done
done
