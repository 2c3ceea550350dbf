#!/usr/bin/env bash
# vbdev against the other initiators and targets on the same machine, 4 KiB randread at QD 1,
# 32 and 128 and randwrite at QD 128 (issue 5, "A comparison harness"; issue 15, SPDK):
# - initiators: `vbdev perf`, the blkio crate (libblkio's Rust engine, virtio-blk only) and,
#   with SPDK_DIR, SPDK's bdevperf (bdev_virtio, virtio-user);
# - targets: vbdev's own polling null target (blk), qemu-storage-daemon null-co (blk) and,
#   with SPDK_DIR, SPDK's vhost target with a null bdev (vhost-blk and vhost-scsi) and vbdev's
#   polling scsi target, so SPDK's bdevperf compares the two targets too.
#
#   bench/compare.sh                   # ROUNDS=5 SECONDS=3, writes bench/runs/<date>-compare/
#   bench/compare.sh --smoke           # every cell once for 1 s, checks every run, prints the time
#   ROUNDS=7 SECONDS=5 bench/compare.sh --no-build
#   SPDK_DIR=/path/to/spdk bench/compare.sh      # SPDK's target and bdevperf as more sides
#
# Environment: ROUNDS (5), SECONDS (3; 1 with --smoke), QUEUE_SIZE (512), TARGETS ("vbdev qsd";
# with SPDK_DIR "vbdev qsd spdk-blk vbdev-scsi spdk-scsi"), ENGINES (every one that applies:
# "vbdev blkio", plus "spdk" with SPDK_DIR), ROWS ("randread:1 randread:32 randread:128
# randwrite:128"), NULL_READ_ZEROES (on, the default: the null targets of vbdev and qsd return
# zeros; off: they leave read buffers untouched, which is what SPDK's null bdev always does, so
# that every target does the same work), TARGET_CPU (0), INITIATOR_CPU (1), VBDEV_CLIENT (perf, the default, or
# example: see run_vbdev), SPDK_DIR (an SPDK build: build/bin/vhost, build/examples/bdevperf,
# scripts/rpc.py, examples/bdev/bdevperf/bdevperf.py; see shared research notes on building
# v24.01), OUT (the output directory; default bench/runs/<date>-compare, or with a time suffix
# if that exists; with --smoke a temporary directory that is removed unless OUT is set).
#
# Method (issue 5, "Figures to beat"):
# - Every run is a fresh target process and a fresh initiator process: the target is started
#   pinned to TARGET_CPU, its socket is awaited, one initiator runs pinned to INITIATOR_CPU for
#   SECONDS, then the target is stopped. No run inherits a connection, memory table or polling
#   state from another, and a target is never measured on its second client.
# - A side is a (target, initiator) pair. For each row, round after round, every side runs
#   once; the order of the targets and of the initiators turns by one each round, so a drift
#   of the machine's speed hits every side alike, and the sides compared in a table (the
#   initiators on one target; SPDK's bdevperf on vbdev's and on SPDK's target) ran interleaved.
# - One queue of QUEUE_SIZE (512: vbdev, the blkio crate, bdevperf's vq_size, vbdev's target,
#   qsd and SPDK all accept it; SPDK's figures in issue 5 use 512 too). 4 KiB requests, a
#   preallocated 4 KiB buffer per in-flight request, busy-polled completions. bdevperf runs
#   with `-z` and starts its test over RPC (`bdevperf.py perform_tests`), which lets
#   `vq_count` be 1 (a plain bdevperf run needs 2).
# - Per cell: the median IOPS of each side, the ratios, each side's min-max, and the median
#   average latency (`lat_avg_us`: perf's and bdevperf's own, the blkio example's elapsed x QD
#   / ios). Only good runs (exit 0, a result line, iops > 0, no I/O errors) count; any other
#   run is listed and makes the script exit 1 after the tables.
#
# The vbdev side is one function, `run_vbdev`: `vbdev perf` (bdevperf's -q/-o/-w/-t, --json) by
# default, the `randread` example with VBDEV_CLIENT=example. The blkio side is `run_blkio`
# (the `blkio_randread` example), SPDK's `run_spdk`.
#
# SPDK needs 2 MiB huge pages mounted at /dev/hugepages: with SPDK_DIR the script reserves
# 2048 (as root) when fewer are, mounts hugetlbfs when it is not, and restores both at exit.
# vbdev then backs its DMA memory with huge pages too (its default when some are free).
#
# Output: raw.csv (one row per run), raw.log (each run's line), summary (machine, load, commit,
# versions, then the tables).
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
SPDK_DIR=${SPDK_DIR:-}
if [[ -n $SPDK_DIR ]]; then
    TARGETS=${TARGETS:-"vbdev qsd spdk-blk vbdev-scsi spdk-scsi"}
    ENGINES=${ENGINES:-"vbdev blkio spdk"}
else
    TARGETS=${TARGETS:-"vbdev qsd"}
    ENGINES=${ENGINES:-"vbdev blkio"}
fi
ROWS=${ROWS:-"randread:1 randread:32 randread:128 randwrite:128"}
NULL_READ_ZEROES=${NULL_READ_ZEROES:-on}
[[ $NULL_READ_ZEROES == on || $NULL_READ_ZEROES == off ]] ||
    { echo "compare.sh: NULL_READ_ZEROES=$NULL_READ_ZEROES is neither on nor off" >&2; exit 2; }
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
    cargo build --release -p vbdev -p vbdev-bdev --bins --example randread --example blkio_randread
fi
for exe in "$bin/vbdev" "$bin/examples/randread" "$bin/examples/blkio_randread"; do
    [[ -x $exe ]] || { echo "compare.sh: $exe is missing (build, or drop --no-build)" >&2; exit 1; }
done
if [[ " $TARGETS " == *" qsd "* ]]; then
    command -v qemu-storage-daemon >/dev/null || { echo "compare.sh: qemu-storage-daemon not found" >&2; exit 1; }
fi
if [[ -n $SPDK_DIR ]]; then
    SPDK_DIR=$(cd "$SPDK_DIR" && pwd)
    for f in build/bin/vhost build/examples/bdevperf scripts/rpc.py examples/bdev/bdevperf/bdevperf.py; do
        [[ -e $SPDK_DIR/$f ]] || { echo "compare.sh: $SPDK_DIR/$f is missing (SPDK_DIR must be an SPDK build)" >&2; exit 1; }
    done
    export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PYTHONPATH=$SPDK_DIR/python${PYTHONPATH:+:$PYTHONPATH}
    command -v python3 >/dev/null || { echo "compare.sh: SPDK_DIR needs python3 (SPDK's rpc.py)" >&2; exit 1; }
elif [[ " $TARGETS $ENGINES " == *spdk* ]]; then
    echo "compare.sh: the spdk target or initiator needs SPDK_DIR" >&2
    exit 2
fi
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
restore=()
cleanup() {
    if [[ -n $target_pid ]]; then
        stop_target
    fi
    rm -rf "$tmp"
    # Huge pages last, in reverse: unmount before giving the pages back.
    for ((i = ${#restore[@]} - 1; i >= 0; i--)); do eval "${restore[i]}" || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n $SPDK_DIR ]]; then
    have=$(cat /proc/sys/vm/nr_hugepages)
    if ((have < 2048)); then
        echo 2048 >/proc/sys/vm/nr_hugepages
        restore+=("echo $have >/proc/sys/vm/nr_hugepages")
    fi
    if ! mountpoint -q /dev/hugepages; then
        mkdir -p /dev/hugepages
        mount -t hugetlbfs nodev /dev/hugepages
        restore+=("umount /dev/hugepages")
    fi
fi

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
echo "target,workload,qd,round,engine,order,load1,status,iops,lat_avg_us,errors,ios" >"$raw"
: >"$log"

# dev_type TARGET: blk or scsi.
dev_type() {
    case $1 in
        *scsi) echo scsi ;;
        *) echo blk ;;
    esac
}

# engines_for TARGET: the initiators that can drive it. Left out: blkio on scsi (it speaks
# virtio-blk only) and on SPDK's targets (libblkio wants protocol features that DPDK's vhost
# library lacks: "Backend doesn't support required protocol features"); SPDK's bdevperf on
# qsd (it asks GET_CONFIG for 256 bytes, which qsd refuses: the attach fails).
engines_for() {
    local e out=()
    for e in $ENGINES; do
        case $e:$1 in
            blkio:*scsi | blkio:spdk-* | spdk:qsd) continue ;;
        esac
        out+=("$e")
    done
    echo "${out[@]}"
}

# rotate N WORD...: the words turned left by N.
rotate() {
    local n=$1
    shift
    local w=("$@") k=$#
    ((k > 0)) || return 0
    n=$((n % k))
    echo "${w[@]:n}" "${w[@]:0:n}"
}

# wait_socket PATH TRIES: polls for a Unix socket every 50 ms (a benchmark script: nothing
# signals it); fails when the target died or the tries ran out.
wait_socket() {
    for _ in $(seq "$2"); do
        [[ -S $1 ]] && return 0
        kill -0 "$target_pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# start_target KIND DIR: starts a target pinned to TARGET_CPU with its socket in DIR, waits
# for it and sets `sock`.
start_target() {
    local kind=$1 dir=$2
    sock=$dir/target.sock
    case $kind in
        vbdev | vbdev-scsi)
            taskset -c "$TARGET_CPU" "$bin/vbdev" target --socket "$sock" --dev-type "$(dev_type "$kind")" \
                --null "$NULL_SIZE" --null-read-zeroes "$NULL_READ_ZEROES" --poll 2>"$tmp/target.err" &
            ;;
        qsd)
            taskset -c "$TARGET_CPU" qemu-storage-daemon \
                --blockdev driver=null-co,node-name=null0,size=$NULL_BYTES,read-zeroes=$NULL_READ_ZEROES \
                --export type=vhost-user-blk,id=e0,node-name=null0,addr.type=unix,addr.path="$sock",writable=on,num-queues=1 \
                2>"$tmp/target.err" &
            ;;
        spdk-blk | spdk-scsi)
            # One reactor on TARGET_CPU, polling; a null bdev of NULL_SIZE, 512-byte blocks.
            "$SPDK_DIR/build/bin/vhost" -m "$(printf '0x%x' $((1 << TARGET_CPU)))" -s 512 -u \
                -S "$dir" -r "$dir/rpc.sock" >"$tmp/target.err" 2>&1 &
            ;;
        *)
            echo "compare.sh: unknown target $kind (vbdev, vbdev-scsi, qsd, spdk-blk, spdk-scsi)" >&2
            exit 2
            ;;
    esac
    target_pid=$!
    if [[ $kind == spdk-* ]]; then
        local rpc=(python3 "$SPDK_DIR/scripts/rpc.py" -s "$dir/rpc.sock" -t 30)
        if wait_socket "$dir/rpc.sock" 400 &&
            "${rpc[@]}" bdev_null_create Null0 $((NULL_BYTES >> 20)) 512 >/dev/null &&
            if [[ $kind == spdk-scsi ]]; then
                "${rpc[@]}" vhost_create_scsi_controller vhost.0 &&
                    "${rpc[@]}" vhost_scsi_controller_add_target vhost.0 0 Null0 >/dev/null
            else
                "${rpc[@]}" vhost_create_blk_controller vhost.0 Null0
            fi >>"$tmp/target.err" 2>&1; then
            sock=$dir/vhost.0
        fi
    fi
    wait_socket "$sock" 200 && return 0
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
            "${initiator[@]}" "$bin/vbdev" perf --vhost-user "$1" --dev-type "$5" \
                --queue-size "$QUEUE_SIZE" -q "$3" -o 4k -w "$2" -t "$4" --json |
                python3 -c 'import json,sys; j=json.load(sys.stdin)["results"][0]; print("iops=%d lat_avg_us=%.1f errors=%d" % (round(j["iops"]), j["avg_latency_us"], j["io_failed"] + j["io_timeout"]))'
            ;;
    esac
}

# run_blkio SOCKET WORKLOAD QD SECONDS DEV_TYPE: the same through the blkio crate.
run_blkio() {
    "${initiator[@]}" "$bin/examples/blkio_randread" "$1" "$3" "$4" blk "$2" "$QUEUE_SIZE"
}

# run_spdk SOCKET WORKLOAD QD SECONDS DEV_TYPE: the same through SPDK's bdevperf (one reactor
# on INITIATOR_CPU, bdev_virtio over virtio-user, one queue of QUEUE_SIZE): started with -z,
# the test started over RPC; the result is its "Total" row.
run_spdk() {
    local dir=$tmp/bdevperf
    rm -rf "$dir"
    mkdir -p "$dir"
    cat >"$dir/bdev.json" <<EOF
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller",
 "params":{"name":"Virtio0","trtype":"user","traddr":"$1","dev_type":"$5","vq_count":1,"vq_size":$QUEUE_SIZE}}]}]}
EOF
    timeout $((secs + 60)) "$SPDK_DIR/build/examples/bdevperf" -z \
        -m "$(printf '0x%x' $((1 << INITIATOR_CPU)))" -g -s 1024 -u -r "$dir/rpc.sock" \
        --json "$dir/bdev.json" -q "$3" -o 4096 -w "$2" -t "$4" >"$dir/out" 2>&1 &
    local pid=$! ok=false
    for _ in $(seq 400); do
        [[ -S $dir/rpc.sock ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if [[ -S $dir/rpc.sock ]] &&
        timeout $((secs + 50)) python3 "$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py" \
            -s "$dir/rpc.sock" -t $((secs + 40)) perform_tests >>"$dir/out" 2>&1; then
        ok=true
    fi
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    cat "$dir/out" >&2
    $ok || return 1
    # " Total : IOPS MiB/s Fail/s TO/s Average min max": the test's, the first one (the
    # shutdown prints an empty one after it).
    tr -d '\r' <"$dir/out" | awk '$1 == "Total" && $2 == ":" {
        printf "iops=%d lat_avg_us=%.2f errors=%d\n", $3, $7, ($5 + $6 > 0); exit }'
}

# field NAME LINE: the value of NAME=... in a result line.
field() { sed -n "s/.*\<$1=\([^ ]*\).*/\1/p" <<<"$2"; }

uptime_before=$(uptime)
bad=()
runs=0
n=0
read -r -a targets <<<"$TARGETS"
for row in $ROWS; do
    workload=${row%:*}
    qd=${row#*:}
    for round in $(seq 1 "$ROUNDS"); do
        order=0
        for target in $(rotate $((round - 1)) "${targets[@]}"); do
            read -r -a engines <<<"$(engines_for "$target")"
            for engine in $(rotate $((round - 1)) "${engines[@]}"); do
                n=$((n + 1))
                order=$((order + 1))
                dir=$tmp/run-$n
                mkdir -p "$dir"
                start_target "$target" "$dir"
                load1=$(cut -d' ' -f1 /proc/loadavg)
                rc=0
                line=$("run_$engine" "$sock" "$workload" "$qd" "$secs" "$(dev_type "$target")" 2>"$tmp/run.err") || rc=$?
                stop_target
                rm -rf "$dir"
                line=$(grep 'iops=' <<<"$line" | tail -n 1 || true)
                iops=$(field iops "$line")
                lat=$(field lat_avg_us "$line")
                errors=$(field errors "$line")
                ios=$(field ios "$line")
                status=ok
                if ((rc != 0)) || [[ -z $line ]] || ! awk -v i="${iops:-0}" 'BEGIN { exit !(i > 0) }' ||
                    [[ ${errors:-0} != 0 ]]; then
                    status=fail
                    bad+=("$target $workload qd=$qd round=$round $engine: exit $rc, line '${line}', stderr: $(tail -c 2000 "$tmp/run.err" | tr '\n' ' ')")
                fi
                runs=$((runs + 1))
                echo "target=$target round=$round engine=$engine order=$order load1=$load1 status=$status $line" | tee -a "$log"
                echo "$target,$workload,$qd,$round,$engine,$order,$load1,$status,$iops,$lat,$errors,$ios" >>"$raw"
            done
        done
    done
done
uptime_after=$(uptime)

commit=$(git rev-parse --short HEAD)
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then commit="$commit (working tree modified)"; fi
spdk_version=
if [[ -n $SPDK_DIR ]]; then
    v=$SPDK_DIR/include/spdk/version.h
    spdk_version=$(awk '$1 == "#define" && $2 == "SPDK_VERSION_MAJOR" { ma = $3 }
        $1 == "#define" && $2 == "SPDK_VERSION_MINOR" { mi = $3 }
        END { if (ma != "") printf "  SPDK v%s.%02d", ma, mi }' "$v" 2>/dev/null || true)
fi
{
    echo "# 4 KiB, 1 queue of $QUEUE_SIZE, target on CPU $TARGET_CPU, initiator on CPU $INITIATOR_CPU"
    echo "# $ROUNDS run(s) per side, ${secs} s each, fresh target and initiator per run, the order of targets and initiators turning each round"
    echo "# date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(uname -n)  nproc: $(nproc)  kernel: $(uname -r)"
    echo "# cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "# commit: $commit"
    echo "# $(rustc --version)  blkio crate $(awk '/^name = "blkio"$/ { getline; print $3 }' Cargo.lock | tr -d '"')  $(qemu-storage-daemon --version 2>/dev/null | head -n 1)$spdk_version"
    echo "# uptime before: ${uptime_before# }"
    echo "# uptime after:  ${uptime_after# }"
    echo "# initiators: vbdev = $client; blkio = blkio_randread example; spdk = SPDK bdevperf -z, bdev_virtio vq_count 1"
    echo "# targets: vbdev(-scsi) = vbdev target --dev-type blk|scsi --null $NULL_SIZE --null-read-zeroes $NULL_READ_ZEROES --poll; qsd = qemu-storage-daemon null-co ${NULL_SIZE}, read-zeroes=$NULL_READ_ZEROES, 1 queue; spdk-blk/-scsi = SPDK vhost, 1 reactor, bdev_null $NULL_SIZE (never touches read buffers)"
    echo "# iops: median (min-max) over the good runs; lat: median lat_avg_us"
    python3 - "$raw" <<'PY'
import csv, statistics, sys

rows = [r for r in csv.DictReader(open(sys.argv[1]))]
good = {}
order = []
for r in rows:
    key = (r["target"], r["workload"], int(r["qd"]), r["engine"])
    if key not in good:
        good[key] = []
        order.append(key)
    if r["status"] == "ok":
        good[key].append((float(r["iops"]), float(r["lat_avg_us"] or 0)))

def med(key):
    v = [i for i, _ in good.get(key, [])]
    return statistics.median(v) if v else None

def spread(key):
    v = [i for i, _ in good.get(key, [])]
    return f"{min(v)/1e3:.0f}k-{max(v)/1e3:.0f}k" if v else "-"

def lat(key):
    v = [l for _, l in good.get(key, [])]
    return f"{statistics.median(v):.1f}" if v else "-"

def f0(x):
    return "-" if x is None else f"{x:.0f}"

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.3f}"

cells = []
for t, w, qd, _ in order:
    if (t, w, qd) not in cells:
        cells.append((t, w, qd))
engines = []
for *_, e in order:
    if e not in engines:
        engines.append(e)

print()
print("initiators on one target (ratios: vbdev / the other)")
head = f"{'target':10} {'workload':9} {'qd':>4}"
for e in engines:
    head += f" {e + '_iops':>11} {e + '_min-max':>14} {e + '_lat':>9}"
for e in engines[1:]:
    head += f" {'v/' + e[0]:>7}"
print(head)
for t, w, qd in cells:
    line = f"{t:10} {w:9} {qd:>4}"
    for e in engines:
        k = (t, w, qd, e)
        line += f" {f0(med(k)):>11} {spread(k):>14} {lat(k):>9}"
    for e in engines[1:]:
        line += f" {ratio(med((t, w, qd, 'vbdev')), med((t, w, qd, e))):>7}"
    print(line)

pairs = [("vbdev", "spdk-blk"), ("vbdev-scsi", "spdk-scsi")]
shown = [(a, b) for a, b in pairs if any(k[0] == a and k[3] == "spdk" for k in good)
         and any(k[0] == b and k[3] == "spdk" for k in good)]
if shown:
    print()
    print("targets under SPDK's bdevperf (ratio: vbdev's target / SPDK's); and vbdev perf on vbdev's target against bdevperf on SPDK's")
    print(f"{'targets':22} {'workload':9} {'qd':>4} {'vbdev_tgt':>11} {'spdk_tgt':>11} {'v/s':>7} {'vbdev+vbdev':>12} {'v+v/s+s':>8}")
    for a, b in shown:
        for _, w, qd in [c for c in cells if c[0] == a]:
            ours = med((a, w, qd, "spdk"))
            theirs = med((b, w, qd, "spdk"))
            both = med((a, w, qd, "vbdev"))
            print(f"{a + ' / ' + b:22} {w:9} {qd:>4} {f0(ours):>11} {f0(theirs):>11} {ratio(ours, theirs):>7} {f0(both):>12} {ratio(both, theirs):>8}")
PY
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
