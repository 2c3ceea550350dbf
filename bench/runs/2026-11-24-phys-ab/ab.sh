#!/usr/bin/env bash
# A/B of `vbdev perf` before (old: c22f0cd, the last landing) and after this
# session's split-queue change (new: the translation branch in try_add, queue
# config with `phys`), against vbdev's polling null blk target (new binary) on
# CPU 0; the initiator on CPU 1; sides alternating, fresh processes.
set -u
dir=$(mktemp -d)
sock=$dir/blk.sock
taskset -c 0 /tmp/vbdev-new target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
tp=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
for r in 1 2 3 4 5; do
  for qd in 1 32; do
    for side in old new; do
      iops=$(/tmp/vbdev-$side perf --vhost-user "$sock" --dev-type blk -m 0x2 -q "$qd" -o 4096 -w randread -t 3 2>/dev/null \
        | awk '/^ Total/ {print $3}')
      echo "round=$r qd=$qd side=$side iops=$iops"
    done
  done
done
kill -INT $tp; wait $tp
rm -rf "$dir"
