#!/usr/bin/env bash
# vbdev vs the blkio crate (libblkio's Rust engine) on the same vhost-user-blk targets: 4 KiB
# randread at QD 1, 32 and 128 and randwrite at QD 128, against (a) vbdev's own polling null
# target and (b) qemu-storage-daemon null-co (issue 5, "A comparison harness").
#
#   bench/compare.sh                   # ROUNDS=5 SECONDS=3, writes bench/runs/<date>-compare/
#   bench/compare.sh --smoke           # every cell once for 1 s, checks every run, prints the time
#   ROUNDS=7 SECONDS=5 bench/compare.sh --no-build
#
# Environment: ROUNDS (5), SECONDS (3; 1 with --smoke), QUEUE_SIZE (512), TARGETS ("vbdev qsd"),
# ROWS ("randread:1 randread:32 randread:128 randwrite:128"), TARGET_CPU (0), INITIATOR_CPU (1),
# VBDEV_CLIENT (perf, the default, or example: see run_vbdev), OUT (the output directory; default bench/runs/<date>-compare, or with a time suffix if that
# exists; with --smoke a temporary directory that is removed unless OUT is set).
#
# Method (issue 5, "Figures to beat"):
# - Every run is a fresh target process and a fresh initiator process: the target is started
#   pinned to TARGET_CPU, its socket is awaited, one initiator runs pinned to INITIATOR_CPU for
#   SECONDS, then the target is stopped. No run inherits a connection, memory table or polling
#   state from another, and a target is never measured on its second client.
# - Cells are (target, row); within a cell vbdev and blkio alternate, ROUNDS runs each, and the
#   side that goes first alternates from round to round (vbdev first in odd rounds), so a drift
#   of the machine's speed during a cell hits both sides alike.
# - One queue of QUEUE_SIZE (512: vbdev, the blkio crate, vbdev's target and qsd all accept it;
#   the SPDK figures in issue 5 use 512 too). 4 KiB requests, the same xorshift offset sequence
#   on both sides, a preallocated 4 KiB buffer per in-flight request, busy-polled completions.
# - Per cell: the median IOPS of each side, their ratio, each side's min-max, and the median
#   average latency (`lat_avg_us` = elapsed x QD / ios, Little's law). Only good runs (exit 0, a
#   result line, iops > 0, no I/O errors) count; any other run is listed and makes the script
#   exit 1 after the table.
#
# The vbdev side is one function, `run_vbdev`: `vbdev perf` (bdevperf's -q/-o/-w/-t, --json) by
# default, the `randread` example with VBDEV_CLIENT=example. The blkio side is `run_blkio` (the `blkio_randread` example).
#
# Output: raw.csv (one row per run), raw.log (each run's line), summary (machine, load, commit,
# versions, then the table).
set -euo pipefail

smoke=false
build=true
for arg in "$@"; do
    case $arg in
        --smoke) smoke=true ;;
        --no-build) build=false ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "compare.sh: unknown argument $arg (--smoke, --no-build, --help)" >&2
            exit 2
            ;;
    esac
done

# SECONDS is bash's seconds-since-start counter, so read the caller's value from the environment.
if $smoke; then
    ROUNDS=1
    secs=1
else
    ROUNDS=${ROUNDS:-5}
    secs=$(printenv SECONDS || echo 3)
fi
QUEUE_SIZE=${QUEUE_SIZE:-512}
TARGETS=${TARGETS:-"vbdev qsd"}
ROWS=${ROWS:-"randread:1 randread:32 randread:128 randwrite:128"}
TARGET_CPU=${TARGET_CPU:-0}
INITIATOR_CPU=${INITIATOR_CPU:-1}
for v in ROUNDS secs QUEUE_SIZE TARGET_CPU INITIATOR_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "compare.sh: $v=${!v} is not a whole number" >&2; exit 2; }
done
NULL_SIZE=8G
NULL_BYTES=$((8 << 30))

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bin=$root/target/release
start_time=$(date +%s)

if $build; then
    cargo build --release -p vbdev -p vbdev-bdev --example randread --example blkio_randread
fi
for exe in "$bin/vbdev" "$bin/examples/randread" "$bin/examples/blkio_randread"; do
    [[ -x $exe ]] || { echo "compare.sh: $exe is missing (build, or drop --no-build)" >&2; exit 1; }
done
command -v qemu-storage-daemon >/dev/null || { echo "compare.sh: qemu-storage-daemon not found" >&2; exit 1; }
command -v taskset >/dev/null || { echo "compare.sh: taskset not found" >&2; exit 1; }
VBDEV_CLIENT=${VBDEV_CLIENT:-perf}
case $VBDEV_CLIENT in
    example) client="vbdev: randread example" ;;
    perf)
        client="vbdev: vbdev perf"
        command -v python3 >/dev/null || { echo "compare.sh: VBDEV_CLIENT=perf needs python3" >&2; exit 1; }
        ;;
    *) echo "compare.sh: VBDEV_CLIENT=$VBDEV_CLIENT: example or perf" >&2; exit 2 ;;
esac

tmp=$(mktemp -d /tmp/vbdev-compare.XXXXXX)
target_pid=
cleanup() {
    if [[ -n $target_pid ]]; then
        stop_target
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${OUT:-} ]]; then
    out=$OUT
elif $smoke; then
    out=$tmp/out
else
    out=$root/bench/runs/$(date +%Y-%m-%d)-compare
    [[ -e $out ]] && out=$out-$(date +%H%M%S)
fi
mkdir -p "$out"
raw=$out/raw.csv
log=$out/raw.log
echo "target,workload,qd,round,engine,first,load1,status,iops,lat_avg_us,errors,ios" >"$raw"
: >"$log"

# start_target KIND SOCKET: starts a target pinned to TARGET_CPU and waits for its socket.
start_target() {
    local kind=$1 sock=$2
    case $kind in
        vbdev)
            taskset -c "$TARGET_CPU" "$bin/vbdev" target --socket "$sock" --dev-type blk \
                --null "$NULL_SIZE" --poll 2>"$tmp/target.err" &
            ;;
        qsd)
            taskset -c "$TARGET_CPU" qemu-storage-daemon \
                --blockdev driver=null-co,node-name=null0,size=$NULL_BYTES,read-zeroes=on \
                --export type=vhost-user-blk,id=e0,node-name=null0,addr.type=unix,addr.path="$sock",writable=on,num-queues=1 \
                2>"$tmp/target.err" &
            ;;
        *)
            echo "compare.sh: unknown target $kind (vbdev, qsd)" >&2
            exit 2
            ;;
    esac
    target_pid=$!
    # A benchmark script, not a test: poll for the socket, for at most 10 s.
    for _ in $(seq 200); do
        [[ -S $sock ]] && return 0
        kill -0 "$target_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "compare.sh: target $kind did not create $sock:" >&2
    cat "$tmp/target.err" >&2
    exit 1
}

# stop_target: SIGTERM, then SIGKILL if the target has not exited within 5 s.
stop_target() {
    kill -TERM "$target_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$target_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$target_pid" 2>/dev/null || true
    wait "$target_pid" 2>/dev/null || true
    target_pid=
}

# Every initiator is killed if it runs 30 s longer than asked.
initiator=(timeout $((secs + 30)) taskset -c "$INITIATOR_CPU")

# run_vbdev SOCKET WORKLOAD QD SECONDS: one vbdev run on INITIATOR_CPU; prints a line with
# `iops=N lat_avg_us=N errors=N` (other fields allowed), exits non-zero on failure. The one place
# to change the vbdev client: `vbdev perf` by default, the example with VBDEV_CLIENT=example
# (perf's avg_latency_us is measured per request, the examples' derived by Little's law).
run_vbdev() {
    case $VBDEV_CLIENT in
        example)
            "${initiator[@]}" "$bin/examples/randread" "$1" "$3" "$4" blk "$2" "$QUEUE_SIZE"
            ;;
        perf)
            "${initiator[@]}" "$bin/vbdev" perf --vhost-user "$1" --dev-type blk \
                --queue-size "$QUEUE_SIZE" -q "$3" -o 4k -w "$2" -t "$4" --json |
                python3 -c 'import json,sys; j=json.load(sys.stdin)["results"][0]; print("iops=%d lat_avg_us=%.1f errors=%d" % (round(j["iops"]), j["avg_latency_us"], j["io_failed"] + j["io_timeout"]))'
            ;;
    esac
}

# run_blkio SOCKET WORKLOAD QD SECONDS: the same through the blkio crate.
run_blkio() {
    "${initiator[@]}" "$bin/examples/blkio_randread" "$1" "$3" "$4" blk "$2" "$QUEUE_SIZE"
}

# field NAME LINE: the value of NAME=... in a result line.
field() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<<"$2"; }

uptime_before=$(uptime)
bad=()
runs=0
n=0
for target in $TARGETS; do
    for row in $ROWS; do
        workload=${row%:*}
        qd=${row#*:}
        for round in $(seq 1 "$ROUNDS"); do
            if ((round % 2)); then order="vbdev blkio"; else order="blkio vbdev"; fi
            first=${order%% *}
            for engine in $order; do
                n=$((n + 1))
                sock=$tmp/$target-$n.sock
                start_target "$target" "$sock"
                load1=$(cut -d' ' -f1 /proc/loadavg)
                rc=0
                line=$("run_$engine" "$sock" "$workload" "$qd" "$secs" 2>"$tmp/run.err") || rc=$?
                stop_target
                line=$(grep 'iops=' <<<"$line" | tail -n 1 || true)
                iops=$(field iops "$line")
                lat=$(field lat_avg_us "$line")
                errors=$(field errors "$line")
                ios=$(field ios "$line")
                status=ok
                if ((rc != 0)) || [[ -z $line ]] || ! awk -v i="${iops:-0}" 'BEGIN { exit !(i > 0) }' ||
                    [[ ${errors:-0} != 0 ]]; then
                    status=fail
                    bad+=("$target $workload qd=$qd round=$round $engine: exit $rc, line '${line}', stderr: $(tr '\n' ' ' <"$tmp/run.err")")
                fi
                runs=$((runs + 1))
                echo "target=$target round=$round engine=$engine first=$first load1=$load1 status=$status $line" | tee -a "$log"
                echo "$target,$workload,$qd,$round,$engine,$first,$load1,$status,$iops,$lat,$errors,$ios" >>"$raw"
            done
        done
    done
done
uptime_after=$(uptime)

# stat COLUMN TARGET WORKLOAD QD ENGINE WHAT: median, min or max of a raw.csv column over the
# good runs of one side of a cell; empty if there are none.
stat() {
    awk -F, -v col="$1" -v t="$2" -v w="$3" -v qd="$4" -v e="$5" \
        'NR > 1 && $1 == t && $2 == w && $3 == qd && $5 == e && $8 == "ok" { print $col }' "$raw" |
        sort -g |
        awk -v what="$6" '{ v[NR] = $1 }
            END {
                if (NR == 0) exit
                if (what == "min") print v[1]
                else if (what == "max") print v[NR]
                else if (NR % 2) print v[(NR + 1) / 2]
                else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
            }'
}
# f1 N: N with one decimal, or "-" if empty.
f1() { awk -v x="$1" 'BEGIN { if (x == "") print "-"; else printf "%.1f", x }'; }
# spread TARGET WORKLOAD QD ENGINE: "min-max" IOPS in thousands, or "-" if no run was good.
spread() {
    local lo hi
    lo=$(stat 9 "$@" min)
    hi=$(stat 9 "$@" max)
    if [[ -z $lo ]]; then echo -; else awk -v a="$lo" -v b="$hi" 'BEGIN { printf "%.0fk-%.0fk", a / 1000, b / 1000 }'; fi
}
# f0 N: N rounded, or "-" if empty.
f0() { awk -v x="$1" 'BEGIN { if (x == "") print "-"; else printf "%.0f", x }'; }

commit=$(git rev-parse --short HEAD)
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then commit="$commit (working tree modified)"; fi
{
    echo "# vbdev vs blkio: 4 KiB, 1 queue of $QUEUE_SIZE, target on CPU $TARGET_CPU, initiator on CPU $INITIATOR_CPU"
    echo "# $ROUNDS run(s) per side per cell, ${secs} s each, fresh target and initiator per run, sides alternating"
    echo "# date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(uname -n)  nproc: $(nproc)  kernel: $(uname -r)"
    echo "# cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "# commit: $commit"
    echo "# $(rustc --version)  blkio crate $(awk '/^name = "blkio"$/ { getline; print $3 }' Cargo.lock | tr -d '"')  $(qemu-storage-daemon --version | head -n 1)"
    echo "# uptime before: ${uptime_before# }"
    echo "# uptime after:  ${uptime_after# }"
    echo "# clients: $client; blkio: blkio_randread example"
    echo "# targets: vbdev = vbdev target --dev-type blk --null $NULL_SIZE --poll; qsd = qemu-storage-daemon null-co ${NULL_SIZE}, read-zeroes=on, 1 queue"
    echo "# iops: median (min-max) over the good runs; lat: median lat_avg_us (elapsed x QD / ios)"
    printf '%-6s %-9s %4s %11s %11s %7s %14s %14s %9s %9s\n' \
        target workload qd vbdev_iops blkio_iops v/b vbdev_min-max blkio_min-max vbdev_lat blkio_lat
    for target in $TARGETS; do
        for row in $ROWS; do
            workload=${row%:*}
            qd=${row#*:}
            vm=$(stat 9 "$target" "$workload" "$qd" vbdev median)
            bm=$(stat 9 "$target" "$workload" "$qd" blkio median)
            ratio=$(awk -v a="$vm" -v b="$bm" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.3f", a / b }')
            printf '%-6s %-9s %4s %11s %11s %7s %14s %14s %9s %9s\n' "$target" "$workload" "$qd" \
                "$(f0 "$vm")" "$(f0 "$bm")" "$ratio" \
                "$(spread "$target" "$workload" "$qd" vbdev)" "$(spread "$target" "$workload" "$qd" blkio)" \
                "$(f1 "$(stat 10 "$target" "$workload" "$qd" vbdev median)")" \
                "$(f1 "$(stat 10 "$target" "$workload" "$qd" blkio median)")"
        done
    done
} | tee "$out/summary"

elapsed=$(($(date +%s) - start_time))
if ((${#bad[@]})); then
    echo "compare.sh: ${#bad[@]} of $runs run(s) failed:" >&2
    printf '  %s\n' "${bad[@]}" >&2
fi
if $smoke; then
    if ((${#bad[@]})); then
        echo "smoke: FAILED (${#bad[@]} of $runs runs bad) in ${elapsed} s" >&2
        exit 1
    fi
    echo "smoke: ok, $runs runs, every one printed iops > 0 with no I/O errors, in ${elapsed} s"
else
    echo "wrote $raw, $log and $out/summary in ${elapsed} s"
fi
((${#bad[@]} == 0))
