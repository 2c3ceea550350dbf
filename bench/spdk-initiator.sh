#!/usr/bin/env bash
# vbdev perf against SPDK's bdevperf (bdev_virtio), both as initiators of one SPDK
# vhost target (null bdev), 4 KiB random I/O, one queue of 512.
#
#   SPDK_DIR=/path/to/spdk VBDEV=target/release/vbdev bench/spdk-initiator.sh
#
# Environment:
#   SPDK_DIR   a built SPDK tree (build/bin/vhost, build/examples/bdevperf) - required
#   VBDEV      the vbdev binary (default: target/release/vbdev)
#   VBDEV_B    a second vbdev binary: it runs as a third side "vbdev_b" (A/B of builds)
#   FLOOR      the ring_floor example (cargo build --release -p vbdev-virtio --example
#              ring_floor; target/release/examples/ring_floor): a side "floor" in the
#              randread cells, the least work an initiator can do per request on our
#              ring, so what the target itself serves (see the example's doc)
#   DEV_TYPES  "blk", "scsi" or "blk scsi" (default blk)
#   CELLS      space-separated QD:WORKLOAD cells (default "1:randread 32:randread
#              128:randread 128:randwrite")
#   RUNS       runs per side and cell (default 5)
#   SECS       seconds per run (default 3)
#   OUT        result directory (default bench/runs/<date>-spdk-initiator)
#   APPEND     1: add to OUT's raw.csv instead of starting it again (run the cells in
#              several invocations, e.g. to keep each hold of a shared machine short);
#              the summary covers the whole file
#
# Method: a fresh SPDK vhost target (`-m 0x1`, core 0, 512 MiB of hugepages) per cell;
# inside a cell the sides alternate run by run (bdevperf, vbdev[, vbdev_b]), each run a
# fresh process on core 1. Writes raw.csv (one line per run) and summary.md (medians,
# ratios to bdevperf). Needs 2 MiB hugepages (about 1.6 GiB free) mounted on
# /dev/hugepages; the script sets them up when absent and restores what it changed.
# Run it under the machine's benchmark lock if you share the machine.
set -euo pipefail

: "${SPDK_DIR:?set SPDK_DIR to a built SPDK tree}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VBDEV=${VBDEV:-$root/target/release/vbdev}
VBDEV_B=${VBDEV_B:-}
FLOOR=${FLOOR:-}
DEV_TYPES=${DEV_TYPES:-blk}
CELLS=${CELLS:-"1:randread 32:randread 128:randread 128:randwrite"}
RUNS=${RUNS:-5}
SECS=${SECS:-3}
out=${OUT:-$root/bench/runs/$(date +%Y-%m-%d)-spdk-initiator}

vhost=$SPDK_DIR/build/bin/vhost
bdevperf=$SPDK_DIR/build/examples/bdevperf
rpc=$SPDK_DIR/scripts/rpc.py
for f in "$vhost" "$bdevperf" "$rpc" "$VBDEV" ${FLOOR:+"$FLOOR"}; do
    [[ -x $f ]] || { echo "missing or not executable: $f" >&2; exit 1; }
done
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=$SPDK_DIR/python${PYTHONPATH:+:$PYTHONPATH}

dir=$(mktemp -d /tmp/spdk-initiator.XXXXXX)
old_hp=$(cat /proc/sys/vm/nr_hugepages)
mounted=0
vhost_pid=

stop_target() {
    if [[ -n $vhost_pid ]]; then
        kill "$vhost_pid" 2>/dev/null || true
        wait "$vhost_pid" 2>/dev/null || true
        vhost_pid=
    fi
}
cleanup() {
    stop_target
    rm -rf "$dir"
    if ((mounted)); then umount /dev/hugepages || true; fi
    if [[ $(cat /proc/sys/vm/nr_hugepages) != "$old_hp" ]]; then
        echo "$old_hp" >/proc/sys/vm/nr_hugepages || true
    fi
}
trap cleanup EXIT

if ((old_hp < 1024)); then echo 1024 >/proc/sys/vm/nr_hugepages; fi
if ! mountpoint -q /dev/hugepages; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages
    mounted=1
fi

start_target() {
    local d=$dir/target
    rm -rf "$d"
    mkdir -p "$d"
    taskset -c 0 "$vhost" -m 0x1 -s 512 -u -S "$d" -r "$d/rpc.sock" >"$d/vhost.log" 2>&1 &
    vhost_pid=$!
    for _ in $(seq 100); do
        [[ -S $d/rpc.sock ]] && break
        sleep 0.1
    done
    local r=("$rpc" -s "$d/rpc.sock" -t 30)
    "${r[@]}" framework_wait_init >/dev/null
    "${r[@]}" bdev_null_create Null0 1024 512 >/dev/null
    "${r[@]}" vhost_create_blk_controller --cpumask 0x1 vhost.blk0 Null0 >/dev/null
    "${r[@]}" bdev_null_create Null1 1024 512 >/dev/null
    "${r[@]}" vhost_create_scsi_controller --cpumask 0x1 vhost.scsi0 >/dev/null
    "${r[@]}" vhost_scsi_controller_add_target vhost.scsi0 0 Null1 >/dev/null
}

# The IOPS of a bdevperf-style "Total" line in file $1 (empty when there is none).
total_iops() { tr '\r' '\n' <"$1" | awk '$1 == "Total" && $2 == ":" { print $3 }' | tail -1; }

run_side() { # side dev qd workload -> prints IOPS (empty on failure)
    local side=$1 dev=$2 qd=$3 wl=$4 log=$dir/run.log sock=$dir/target/vhost.${2}0 ctrl
    case $side in
        bdevperf)
            ctrl=VirtioBlk0
            [[ $dev == scsi ]] && ctrl=VirtioScsi0
            # vq_count 2: a plain (non -z) bdevperf run with one queue cannot open its
            # channel while the examine path holds the only one (SPDK quirk).
            printf '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_virtio_attach_controller","params":{"name":"%s","trtype":"user","traddr":"%s","dev_type":"%s","vq_count":2,"vq_size":512}}]}]}\n' \
                "$ctrl" "$sock" "$dev" >"$dir/cfg.json"
            taskset -c 1 "$bdevperf" -m 0x2 -g -s 1024 -u --json "$dir/cfg.json" \
                -q "$qd" -o 4096 -w "$wl" -t "$SECS" >"$log" 2>&1 || true
            ;;
        vbdev | vbdev_b)
            local bin=$VBDEV
            [[ $side == vbdev_b ]] && bin=$VBDEV_B
            taskset -c 1 "$bin" perf --vhost-user "$sock" --dev-type "$dev" \
                -q "$qd" -o 4k -w "$wl" -t "$SECS" --queues 1 --queue-size 512 \
                --timeout-ms 30000 >"$log" 2>&1 || true
            ;;
        floor)
            taskset -c 1 "$FLOOR" "$sock" "$dev" "$qd" "$SECS" 512 --hugetlb >"$log" 2>&1 || true
            ;;
    esac
    local iops
    iops=$(total_iops "$log")
    [[ $side == floor ]] && iops=$(sed -n 's/^ring_floor .* iops=\([0-9]*\).*/\1/p' "$log")
    if [[ -z $iops ]]; then
        echo "run failed: $side $dev qd=$qd $wl; last lines:" >&2
        tail -3 "$log" >&2
    fi
    echo "$iops"
}

sides=(bdevperf vbdev)
[[ -n $VBDEV_B ]] && sides+=(vbdev_b)
[[ -n $FLOOR ]] && sides+=(floor)

mkdir -p "$out"
raw=$out/raw.csv
if [[ ${APPEND:-0} != 1 || ! -s $raw ]]; then
    echo "time,dev,qd,workload,round,side,iops,loadavg1" >"$raw"
fi
for dev in $DEV_TYPES; do
    for cell in $CELLS; do
        qd=${cell%%:*}
        wl=${cell#*:}
        start_target
        for round in $(seq 1 "$RUNS"); do
            for side in "${sides[@]}"; do
                [[ $side == floor && $wl != randread ]] && continue # the floor only reads
                load=$(cut -d' ' -f1 /proc/loadavg)
                iops=$(run_side "$side" "$dev" "$qd" "$wl")
                echo "$(date -u +%H:%M:%S),$dev,$qd,$wl,$round,$side,$iops,$load" | tee -a "$raw"
            done
        done
        stop_target
    done
done

# The median of the numbers on stdin, one a line: the middle one as it was written, or
# the mean of the middle two to two decimals; "-" when there are none.
median() {
    sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) { print "-"; exit }
              if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Summary: median per side and cell, ratio of each vbdev side to bdevperf.
{
    echo "| dev | qd | workload | side | runs | median IOPS | min | max | median / bdevperf | median of per-round ratios |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    awk -F, 'NR > 1 && $7 != "" { k = $2 "," $3 "," $4 "," $6; v[k] = v[k] " " $7 }
        END { for (k in v) print k "," v[k] }' "$raw" | sort -t, -k1,1 -k2,2n -k3,3 -k4,4 |
        while IFS=, read -r d q w s vals; do
            read -r -a a <<<"$(tr ' ' '\n' <<<"$vals" | sed '/^$/d' | sort -g | tr '\n' ' ')"
            n=${#a[@]}
            med=$(printf '%s\n' "${a[@]}" | median)
            echo "$d,$q,$w,$s,$n,$med,${a[0]},${a[n - 1]}"
        done >"$dir/med.csv"
    while IFS=, read -r d q w s n med lo hi; do
        base=$(awk -F, -v d="$d" -v q="$q" -v w="$w" '$1 == d && $2 == q && $3 == w && $4 == "bdevperf" { print $6 }' "$dir/med.csv")
        ratio=$(awk -v a="$med" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
        # The side against bdevperf in the same round (adjacent runs, most often on the
        # same one of the machine's speed levels), median over the rounds.
        pair=$(awk -F, -v d="$d" -v q="$q" -v w="$w" -v s="$s" '
            NR > 1 && $1 != "" && $2 == d && $3 == q && $4 == w && $7 != "" {
                if ($6 == "bdevperf") b[$5] = $7; else if ($6 == s) x[$5] = $7 }
            END { for (r in x) if (b[r] > 0) printf "%.6f\n", x[r] / b[r] }' "$raw" | median)
        [[ $pair == - ]] || pair=$(printf '%.2f' "$pair")
        printf '| %s | %s | %s | %s | %s | %.0f | %.0f | %.0f | %s | %s |\n' "$d" "$q" "$w" "$s" "$n" "$med" "$lo" "$hi" "$ratio" "$pair"
    done <"$dir/med.csv"
} | tee "$out/summary.md"
