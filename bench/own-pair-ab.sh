#!/usr/bin/env bash
# A/B of vbdev's own pair: `vbdev perf` against `vbdev target --poll --null 1G` (reads return
# zeros: the default, which both binaries have), one binary against another, 4 KiB randread.
#
#   OLD=path/to/old/vbdev NEW=target/release/vbdev bench/own-pair-ab.sh
#
# Environment: OLD, NEW (vbdev binaries; each side runs its own target and its own perf),
# TYPE (blk), DEPTHS ("1 32"), ROUNDS (5), SECS (3), QUEUE_SIZE (512), TARGET_CPU (0),
# INITIATOR_CPU (1), OUT (output directory, default bench/runs/<date>-own-pair-ab).
#
# Method: per depth, ROUNDS rounds; in each round both sides run once, the side that goes
# first alternating; every run is a fresh target pinned to TARGET_CPU and a fresh `vbdev perf`
# pinned to INITIATOR_CPU. raw.csv: one row per run; summary: medians, min-max, NEW/OLD.
set -euo pipefail

: "${OLD:?set OLD to the baseline vbdev binary}"
: "${NEW:?set NEW to the vbdev binary under test}"
TYPE=${TYPE:-blk}
DEPTHS=${DEPTHS:-"1 32"}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
QUEUE_SIZE=${QUEUE_SIZE:-512}
TARGET_CPU=${TARGET_CPU:-0}
INITIATOR_CPU=${INITIATOR_CPU:-1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$root/bench/runs/$(date -u +%Y-%m-%d)-own-pair-ab}
OLD=$(realpath "$OLD")
NEW=$(realpath "$NEW")
mkdir -p "$OUT"
raw=$OUT/raw.csv
[[ -s $raw ]] || echo "time,side,type,qd,round,iops,avg_lat_us,load1" >"$raw"
work=$(mktemp -d /tmp/own-pair-ab.XXXXXX)
tpid=
cleanup() {
    if [[ -n $tpid ]]; then kill -9 "$tpid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

run_one() { # side binary qd round
    local side=$1 bin=$2 qd=$3 round=$4 load out i
    load=$(cut -d' ' -f1 /proc/loadavg)
    local sock=$work/t.sock
    rm -f "$sock"
    taskset -c "$TARGET_CPU" "$bin" target --socket "$sock" --poll --null 1G --dev-type "$TYPE" \
        --queues 1 >"$work/target.log" 2>&1 &
    tpid=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S $sock ]] && break
        sleep 0.05
    done
    out=$(taskset -c "$INITIATOR_CPU" "$bin" perf --vhost-user "$sock" --dev-type "$TYPE" \
        --queue-size "$QUEUE_SIZE" -q "$qd" -o 4k -w randread -t "$SECS" --json |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["results"][0]; print("%d %.2f" % (round(j["iops"]), j["avg_latency_us"]))') || out="0 0"
    kill -INT "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    tpid=
    printf '%s,%s,%s,%s,%s,%s,%s,%s\n' "$(date -u +%H:%M:%S)" "$side" "$TYPE" "$qd" "$round" \
        "${out% *}" "${out#* }" "$load" | tee -a "$raw"
}

for qd in $DEPTHS; do
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2)); then order="old new"; else order="new old"; fi
        for side in $order; do
            if [[ $side == old ]]; then run_one old "$OLD" "$qd" "$r"; else run_one new "$NEW" "$qd" "$r"; fi
        done
    done
done

python3 - "$raw" >"$OUT/summary" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cells = {}
for r in rows:
    cells.setdefault((r["type"], int(r["qd"])), {}).setdefault(r["side"], []).append(float(r["iops"]))
print("vbdev perf against vbdev target --poll --null 1G, 4 KiB randread; IOPS medians (min-max), n")
print(f"{'type':5} {'qd':>4} {'old':>24} {'new':>24} {'new/old':>8}")
for key in sorted(cells):
    c = cells[key]
    def cell(side):
        v = [x for x in c.get(side, []) if x > 0]
        if not v:
            return 0.0, "-"
        m = statistics.median(v)
        return m, f"{m/1e6:.2f}M ({min(v)/1e6:.2f}-{max(v)/1e6:.2f}) n{len(v)}"
    mo, so = cell("old")
    mn, sn = cell("new")
    print(f"{key[0]:5} {key[1]:>4} {so:>24} {sn:>24} {(mn/mo if mo else 0):>8.2f}")
PY
cat "$OUT/summary"
