#!/bin/bash
# tab.sh QD ROUNDS W bin1 bin2 ... : own polling null blk target from each binary; initiator vbdev.new perf
qd=$1; rounds=$2; w=$3; shift 3
sock=/tmp/q/tab.sock
one() {
  rm -f $sock
  taskset -c 0 $1 target --socket $sock --dev-type blk --null 8G --poll 2>/dev/null &
  local tp=$!
  while [ ! -S $sock ]; do sleep 0.02; done
  taskset -c 1 /tmp/q/vbdev.new perf --vhost-user $sock --dev-type blk --queue-size 512 -q $qd -o 4k -w $w -t 3 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["results"][0]["iops"]))'
  kill $tp; wait $tp 2>/dev/null
}
for r in $(seq $rounds); do
  line="r$r"
  for s in "$@"; do line="$line $(basename $s)=$(one $s)"; done
  echo "$line"
done
