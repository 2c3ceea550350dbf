#!/usr/bin/env bash
# A/B of two target binaries (old/new) with the same initiator (randread-new), blk null poll.
set -u
for r in 1 2 3 4 5; do
  for qd in 1 32; do
    for side in bench batch; do
      dir=$(mktemp -d); sock=$dir/blk.sock
      taskset -c 0 /tmp/vbdev-$side target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
      tp=$!
      for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
      line=$(taskset -c 1 /tmp/randread-new "$sock" "$qd" 2 blk)
      kill -INT $tp; wait $tp
      rm -rf "$dir"
      echo "round=$r side=$side $line"
    done
  done
done
