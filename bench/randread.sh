#!/usr/bin/env bash
# Random 4 KiB reads, vbdev vs the blkio crate (pure-Rust libblkio), against one
# qemu-storage-daemon null-co vhost-user-blk export.
#
#   bench/randread.sh                 # RUNS=5 SECONDS=3 QDS="1 32"
#   RUNS=9 SECONDS=5 bench/randread.sh
#
# Each round runs `randread` (vbdev) then `blkio_randread` (blkio) as fresh processes,
# one after the other, so slow and fast phases of the machine hit both engines alike.
# Writes bench/runs/<date>-<hostname>/{raw.csv,summary} (OUT overrides the directory;
# an existing raw.csv and summary there are overwritten).
set -euo pipefail

RUNS=${RUNS:-5}
# SECONDS is bash's seconds-since-start counter, so read the caller's value from the
# environment rather than from the shell variable.
SECONDS_PER_RUN=$(printenv SECONDS || echo 3)
[[ $SECONDS_PER_RUN =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number of seconds" >&2; exit 1; }
QDS=${QDS:-"1 32"}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/bench/runs/$(date +%Y-%m-%d)-$(uname -n)}

cd "$root"
cargo build --release -p vbdev-bdev --example randread --example blkio_randread
bin=$root/target/release/examples

dir=$(mktemp -d /tmp/vbdev-bench.XXXXXX)
cleanup() {
    if [[ -s $dir/qsd.pid ]]; then
        kill "$(cat "$dir/qsd.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

qemu-storage-daemon \
    --blockdev driver=null-co,node-name=null0,size=1073741824,read-zeroes=on \
    --export type=vhost-user-blk,id=e0,node-name=null0,addr.type=unix,addr.path="$dir/vn.sock",writable=on,num-queues=1 \
    --pidfile "$dir/qsd.pid" --daemonize
for _ in $(seq 50); do
    [[ -S $dir/vn.sock ]] && break
    sleep 0.1
done
[[ -S $dir/vn.sock ]] || { echo "qemu-storage-daemon did not create $dir/vn.sock" >&2; exit 1; }

mkdir -p "$out"
raw=$out/raw.csv
echo "round,qd,engine,iops,lat_avg_us" >"$raw"

# field NAME LINE: the value of NAME=... in a result line.
field() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<<"$2"; }

for qd in $QDS; do
    for round in $(seq 1 "$RUNS"); do
        for engine in vbdev blkio; do
            case $engine in
                vbdev) exe=$bin/randread ;;
                blkio) exe=$bin/blkio_randread ;;
            esac
            line=$(timeout $((SECONDS_PER_RUN + 30)) "$exe" "$dir/vn.sock" "$qd" "$SECONDS_PER_RUN")
            echo "round=$round engine=$engine $line"
            errors=$(field errors "$line")
            if [[ $errors != 0 ]]; then
                echo "warning: $engine qd=$qd round=$round had $errors I/O errors" >&2
            fi
            echo "$round,$qd,$engine,$(field iops "$line"),$(field lat_avg_us "$line")" >>"$raw"
        done
    done
done

# median COLUMN QD ENGINE: median of a raw.csv column over the rounds.
median() {
    awk -F, -v col="$1" -v qd="$2" -v eng="$3" 'NR > 1 && $2 == qd && $3 == eng { print $col }' "$raw" |
        sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

{
    echo "# randread 4 KiB, 1 queue of 256, qsd null-co; median of $RUNS rounds x ${SECONDS_PER_RUN} s per engine"
    printf '%-4s %12s %12s %12s %16s %16s\n' qd vbdev_iops blkio_iops vbdev/blkio vbdev_lat_us blkio_lat_us
    for qd in $QDS; do
        v=$(median 4 "$qd" vbdev)
        b=$(median 4 "$qd" blkio)
        vl=$(median 5 "$qd" vbdev)
        bl=$(median 5 "$qd" blkio)
        printf '%-4s %12.0f %12.0f %12.3f %16.1f %16.1f\n' "$qd" "$v" "$b" "$(awk -v a="$v" -v b="$b" 'BEGIN { print a / b }')" "$vl" "$bl"
    done
} | tee "$out/summary"
echo "wrote $raw and $out/summary"
