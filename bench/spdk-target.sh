#!/usr/bin/env bash
# SPDK's stock bdevperf (bdev_virtio, virtio-user) against two polling vhost-user targets on the
# same null disk: vbdev's own (`vbdev target --poll --null 1G`) and SPDK's vhost target
# (`bdev_null_create Null0 1024 512`), 4 KiB randread (issue 15, "Our polling target >= 1.0x
# SPDK's target serving SPDK's bdevperf").
#
#   SPDK_DIR=~/spdk VBDEV=target/release/vbdev bench/spdk-target.sh
#   TYPES=scsi QUEUES="2 4" DEPTHS="32 128" ROUNDS=5 SPDK_DIR=... VBDEV=... bench/spdk-target.sh
#
# Environment: SPDK_DIR (an SPDK build: build/bin/vhost, build/examples/bdevperf, scripts/rpc.py),
# VBDEV (the vbdev binary), TYPES ("scsi blk"), QUEUES ("1 2 4": request queues the target
# offers and bdevperf's vq_count), DEPTHS ("1 32 128"), ROUNDS (5), SECS (3), VQ_SIZE (512),
# POLL_THREADS (unset: vbdev's default, one poller for all queues), NULL_READ_ZEROES (unset:
# vbdev's default, reads return zeros; `off`: reads leave bdevperf's buffers untouched, as
# SPDK's null bdev does, which is the like-for-like comparison), TARGET_CPU (0),
# INITIATOR_CPU (1), OUT (output directory, default bench/runs/<date>-spdk-target; raw.csv is
# appended to, so batches can be run one after the other into the same directory).
#
# Method:
# - Every run is a fresh target process pinned to TARGET_CPU and a fresh bdevperf on
#   INITIATOR_CPU (`-m`, one reactor): bdevperf starts with `-z`, attaches through its JSON
#   config (`bdev_virtio_attach_controller`, trtype user, vq_count = queues, vq_size VQ_SIZE),
#   then `bdevperf.py perform_tests` runs one SECS-second test (`-z` is what lets vq_count be 1:
#   a plain run needs 2, see SPDK's bdevperf). Then both processes are stopped.
# - Cells are (type, queues, depth); within a cell vbdev and SPDK alternate, ROUNDS runs each,
#   the side that goes first alternating from round to round.
# - Both targets poll: SPDK's one reactor polls every queue of its controller; vbdev's
#   `--poll` target one poller thread for all request queues (unless POLL_THREADS is set).
# - IOPS is bdevperf's "Total" row. summary: the median of each side, the ratio vbdev/SPDK and
#   each side's min-max per cell; raw.csv: one row per run with the 1-minute load average
#   before it. A failed run is recorded with iops 0 and listed; the script then exits 1.
#
# Hugepages: SPDK needs ~1.5 GiB of 2 MiB pages mounted at /dev/hugepages. If fewer are
# reserved or none are mounted the script reserves and mounts them (as root) and restores both
# on exit.
set -euo pipefail

: "${SPDK_DIR:?set SPDK_DIR to an SPDK build}"
: "${VBDEV:?set VBDEV to the vbdev binary}"
TYPES=${TYPES:-"scsi blk"}
QUEUES=${QUEUES:-"1 2 4"}
DEPTHS=${DEPTHS:-"1 32 128"}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
VQ_SIZE=${VQ_SIZE:-512}
TARGET_CPU=${TARGET_CPU:-0}
INITIATOR_CPU=${INITIATOR_CPU:-1}
POLL_THREADS=${POLL_THREADS:-}
NULL_READ_ZEROES=${NULL_READ_ZEROES:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$root/bench/runs/$(date -u +%Y-%m-%d)-spdk-target}
VBDEV=$(realpath "$VBDEV")
SPDK_DIR=$(realpath "$SPDK_DIR")
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$SPDK_DIR/python${PYTHONPATH:+:$PYTHONPATH}
rpc=$SPDK_DIR/scripts/rpc.py
perf_py=$SPDK_DIR/examples/bdev/bdevperf/bdevperf.py
tmask=$(printf '0x%x' $((1 << TARGET_CPU)))
imask=$(printf '0x%x' $((1 << INITIATOR_CPU)))
mkdir -p "$OUT"
raw=$OUT/raw.csv
[[ -s $raw ]] || echo "time,side,type,queues,qd,round,iops,avg_lat_us,load1" >"$raw"
log=$OUT/raw.log

# Hugepages, restored on exit.
restore=()
need=768
have=$(cat /proc/sys/vm/nr_hugepages)
if ((have < need)); then
    echo $need >/proc/sys/vm/nr_hugepages
    restore+=("echo $have >/proc/sys/vm/nr_hugepages")
fi
if ! mountpoint -q /dev/hugepages; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages
    restore+=("umount /dev/hugepages")
fi
work=$(mktemp -d /tmp/spdk-target.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
    # Reverse order: unmount before giving the pages back.
    for ((i = ${#restore[@]} - 1; i >= 0; i--)); do eval "${restore[i]}" || true; done
}
trap cleanup EXIT

wait_for() { # path, seconds
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        [[ -S $1 ]] && return 0
        sleep 0.05
    done
    return 1
}

stop() { # pid
    kill -INT "$1" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

start_vbdev() { # type queues -> socket path in $sock
    local extra=()
    [[ -n $POLL_THREADS ]] && extra=(--poll-threads "$POLL_THREADS")
    [[ -n $NULL_READ_ZEROES ]] && extra+=(--null-read-zeroes "$NULL_READ_ZEROES")
    sock=$work/vbdev.sock
    taskset -c "$TARGET_CPU" "$VBDEV" target --socket "$sock" --poll --null 1G --dev-type "$1" \
        --queues "$2" "${extra[@]}" >"$work/target.log" 2>&1 &
    tpid=$!
    pids=("$tpid")
    wait_for "$sock" 10
}

start_spdk() { # type queues
    rm -f "$work/vhost-rpc.sock"
    "$SPDK_DIR/build/bin/vhost" -m "$tmask" -s 512 -u -S "$work" -r "$work/vhost-rpc.sock" \
        >"$work/target.log" 2>&1 &
    tpid=$!
    pids=("$tpid")
    wait_for "$work/vhost-rpc.sock" 20
    local r=(python3 "$rpc" -s "$work/vhost-rpc.sock" -t 30)
    "${r[@]}" bdev_null_create Null0 1024 512 >/dev/null
    if [[ $1 == scsi ]]; then
        "${r[@]}" vhost_create_scsi_controller --cpumask "$tmask" vhost.0
        "${r[@]}" vhost_scsi_controller_add_target vhost.0 0 Null0 >/dev/null
    else
        "${r[@]}" vhost_create_blk_controller --cpumask "$tmask" vhost.0 Null0
    fi
    sock=$work/vhost.0
    wait_for "$sock" 10
}

run_one() { # side type queues qd round
    local side=$1 type=$2 q=$3 qd=$4 round=$5 load iops lat
    load=$(cut -d' ' -f1 /proc/loadavg)
    rm -rf "$work"/*
    if [[ $side == vbdev ]]; then start_vbdev "$type" "$q"; else start_spdk "$type" "$q"; fi
    cat >"$work/bdevperf.json" <<EOF
{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller",
"params":{"name":"Virtio0","trtype":"user","traddr":"$sock","dev_type":"$type",
"vq_count":$q,"vq_size":$VQ_SIZE}}]}]}
EOF
    "$SPDK_DIR/build/examples/bdevperf" -z -m "$imask" -g -s 1024 -u -r "$work/bdevperf.sock" \
        --json "$work/bdevperf.json" -q "$qd" -o 4096 -w randread -t "$SECS" \
        >"$work/bdevperf.log" 2>&1 &
    local bpid=$!
    pids+=("$bpid")
    iops=0 lat=0
    if wait_for "$work/bdevperf.sock" 30 &&
        timeout $((SECS + 60)) python3 "$perf_py" -s "$work/bdevperf.sock" -t $((SECS + 50)) \
            perform_tests >>"$work/bdevperf.log" 2>&1; then
        # "Total : IOPS MiB/s Fail/s TO/s Average min max"
        read -r iops lat < <(tr -d '\r' <"$work/bdevperf.log" |
            awk '$1 == "Total" && $2 == ":" {print $3, $7}' | tail -1) || true
    fi
    stop "$bpid"
    stop "$tpid"
    pids=()
    iops=${iops:-0} lat=${lat:-0}
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$(date -u +%H:%M:%S)" "$side" "$type" "$q" "$qd" \
        "$round" "$iops" "$lat" "$load" | tee -a "$raw"
    if [[ $iops == 0 ]]; then
        echo "FAILED: $side $type q$q qd$qd round $round" | tee -a "$log"
        cat "$work/bdevperf.log" "$work/target.log" >>"$log"
        failed=1
    fi
}

failed=0
for type in $TYPES; do
    for q in $QUEUES; do
        for qd in $DEPTHS; do
            for ((r = 1; r <= ROUNDS; r++)); do
                if ((r % 2)); then order="vbdev spdk"; else order="spdk vbdev"; fi
                for side in $order; do run_one "$side" "$type" "$q" "$qd" "$r"; done
            done
        done
    done
done

# The summary covers every row of raw.csv, earlier batches included.
python3 - "$raw" >"$OUT/summary" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cells = {}
for r in rows:
    key = (r["type"], int(r["queues"]), int(r["qd"]))
    cells.setdefault(key, {}).setdefault(r["side"], []).append(float(r["iops"]))
print("4 KiB randread, SPDK bdevperf on the initiator core; IOPS medians (min-max), n runs a side")
print(f"{'type':5} {'queues':>6} {'qd':>4} {'vbdev':>24} {'spdk':>24} {'ratio':>6}")
for key in sorted(cells):
    c = cells[key]
    def cell(side):
        v = [x for x in c.get(side, []) if x > 0]
        if not v:
            return 0.0, "-"
        m = statistics.median(v)
        return m, f"{m/1e6:.2f}M ({min(v)/1e6:.2f}-{max(v)/1e6:.2f}) n{len(v)}"
    mv, sv = cell("vbdev")
    ms, ss = cell("spdk")
    ratio = f"{mv/ms:.2f}" if ms else "-"
    print(f"{key[0]:5} {key[1]:>6} {key[2]:>4} {sv:>24} {ss:>24} {ratio:>6}")
PY
cat "$OUT/summary"
exit $failed
