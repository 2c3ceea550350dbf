#!/usr/bin/env bash
# A/B of the scsi initiator path: per-request queue lock (lock) vs staged submissions (stage),
# against vbdev's polling null scsi target; one target per round, alternating sides.
set -u
for r in 1 2 3 4 5 6 7; do
  dir=$(mktemp -d); sock=$dir/s.sock
  taskset -c 0 /tmp/vbdev-cur target --socket "$sock" --dev-type scsi --null 8G --poll 2>/dev/null &
  tp=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  for qd in 1 32; do
    for side in new stage; do
      line=$(taskset -c 1 /tmp/randread-$side "$sock" "$qd" 2 scsi)
      echo "round=$r side=$side $line"
    done
  done
  kill -INT $tp; wait $tp; rm -rf "$dir"
done
