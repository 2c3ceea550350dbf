#!/usr/bin/env bash
set -u
for r in 1 2 3 4 5; do
  for side in perf ex blkio; do
    dir=$(mktemp -d); sock=$dir/b.sock
    taskset -c 0 /tmp/vbdev-now target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
    tp=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    case $side in
      blkio) line=$(taskset -c 1 /work/main/target/release/examples/blkio_randread "$sock" 1 2 blk randread 512 | sed 's/.*iops=\([0-9]*\).*/\1/') ;;
      ex) line=$(taskset -c 1 /work/main/target/release/examples/randread "$sock" 1 2 blk randread 512 | sed 's/.*iops=\([0-9]*\).*/\1/') ;;
      perf) line=$(taskset -c 1 /tmp/vbdev-now perf --vhost-user "$sock" --dev-type blk --queue-size 512 -q 1 -o 4k -w randread -t 2 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))') ;;
    esac
    kill -INT $tp; wait $tp; rm -rf "$dir"
    echo "round=$r side=$side qd=1 iops=$line"
  done
done
