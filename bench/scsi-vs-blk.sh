#!/usr/bin/env bash
# virtio-scsi vs virtio-blk initiator cost on vbdev's own polling null target:
# 4 KiB random reads, one queue of 256, target pinned to CPU 0 and initiator to CPU 1,
# blk and scsi alternating as fresh processes. Prints one line per run and the medians.
# usage: bench/scsi-vs-blk.sh [ROUNDS] [SECONDS] [QDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; secs=${2:-3}; shift 2 || true
qds=("$@"); [ ${#qds[@]} -gt 0 ] || qds=(1 32)
cargo build -q --release -p vbdev -p vbdev-bdev --example randread
dir=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
out="$dir/results"
for r in $(seq 1 "$rounds"); do
  for qd in "${qds[@]}"; do
    for dev in blk scsi; do
      sock="$dir/$dev.sock"
      taskset -c 0 target/release/vbdev target --socket "$sock" --dev-type "$dev" --null 8G --poll &
      tp=$!
      for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
      line=$(taskset -c 1 target/release/examples/randread "$sock" "$qd" "$secs" "$dev")
      kill -INT $tp; wait $tp || true
      echo "round=$r dev=$dev $line" | tee -a "$out"
    done
  done
done
echo "medians:"
for qd in "${qds[@]}"; do
  for dev in blk scsi; do
    m=$(grep "dev=$dev qd=$qd " "$out" | sed 's/.*iops=\([0-9]*\).*/\1/' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    echo "qd=$qd dev=$dev median_iops=$m"
  done
done
