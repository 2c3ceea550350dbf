#!/usr/bin/env bash
set -u
for r in 1 2 3 4 5; do
  for qd in 1 32 128; do
    for side in ind dir blkio; do
      dir=$(mktemp -d); sock=$dir/b.sock
      taskset -c 0 /tmp/vbdev-cur target --socket "$sock" --dev-type blk --null 8G --poll 2>/dev/null &
      tp=$!
      for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
      case $side in
        blkio) line=$(taskset -c 1 /work/main/target/release/examples/blkio_randread "$sock" "$qd" 2 blk randread 512 | sed 's/.*iops=\([0-9]*\).*/\1/') ;;
        ind) line=$(VBDEV_DIRECT_MAX=0 taskset -c 1 /tmp/vbdev-dm perf --vhost-user "$sock" --dev-type blk --queue-size 512 -q "$qd" -o 4k -w randread -t 2 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))') ;;
        dir) line=$(taskset -c 1 /tmp/vbdev-dm2 perf --vhost-user "$sock" --dev-type blk --queue-size 512 -q "$qd" -o 4k -w randread -t 2 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))') ;;
      esac
      kill -INT $tp; wait $tp; rm -rf "$dir"
      echo "round=$r side=$side qd=$qd iops=$line"
    done
  done
done
