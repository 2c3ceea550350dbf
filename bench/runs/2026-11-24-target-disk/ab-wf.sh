#!/usr/bin/env bash
# target A/B: /tmp/vbdev-cur (drain + HashMap per request) vs /tmp/vbdev-disk; same initiator.
set -u
for r in 1 2 3 4 5; do
  for qd in 1 32 128; do
    for side in now wf; do
      dir=$(mktemp -d); sock=$dir/b.sock
      taskset -c 0 /tmp/vbdev-$side target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
      tp=$!
      for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
      line=$(taskset -c 1 /tmp/vbdev-dm2 perf --vhost-user "$sock" --dev-type blk --queue-size 512 -q "$qd" -o 4k -w randwrite -t 2 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))')
      kill -INT $tp; wait $tp; rm -rf "$dir"
      echo "round=$r side=$side qd=$qd iops=$line"
    done
  done
done
