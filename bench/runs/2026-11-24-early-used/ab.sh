#!/bin/bash
# ev.sh QD ROUNDS W spec... ; spec = client:EVERY
B=/work/main/target/release
qd=$1; rounds=$2; w=$3; shift 3
sock=/tmp/q/ev.sock
one() {
  rm -f $sock
  VBDEV_EVERY=${1#*:} taskset -c 0 $B/vbdev target --socket $sock --dev-type blk --null 8G --poll 2>/dev/null &
  local tp=$!
  while [ ! -S $sock ]; do sleep 0.02; done
  case ${1%:*} in
   perf) taskset -c 1 $B/vbdev perf --vhost-user $sock --dev-type blk --queue-size 512 -q $qd -o 4k -w $w -t 3 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))';;
   example) taskset -c 1 $B/examples/randread $sock $qd 3 blk $w 512 | sed 's/.*iops=\([0-9]*\).*/\1/';;
   blkio) taskset -c 1 $B/examples/blkio_randread $sock $qd 3 blk $w 512 | sed 's/.*iops=\([0-9]*\).*/\1/';;
  esac
  kill $tp; wait $tp 2>/dev/null
}
for r in $(seq $rounds); do
  line="r$r"
  for s in "$@"; do line="$line $s=$(one $s)"; done
  echo "$line"
done
