#!/usr/bin/env bash
# A/B of two randread binaries against vbdev's polling null blk target.
set -u
dir=$(mktemp -d)
sock=$dir/blk.sock
taskset -c 0 /tmp/vbdev-bench target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
tp=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
for r in 1 2 3 4 5 6 7; do
  for qd in 1 32; do
    for side in old new; do
      line=$(taskset -c 1 /tmp/randread-$side "$sock" "$qd" 2 blk)
      echo "round=$r side=$side $line"
    done
  done
done
kill -INT $tp; wait $tp
rm -rf "$dir"
