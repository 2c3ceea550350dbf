#!/usr/bin/env bash
# A/B of two vbdev builds (or one build under two environments) on vbdev's own pair:
# `vbdev perf` against `vbdev target --poll`, 4 KiB requests, fresh processes interleaved.
# The one A/B harness of the project: every run directory it writes keeps its command,
# the versions of what ran, the raw data and the summary.
#
#   OLD=path/to/old/vbdev NEW=target/release/vbdev bench/ab.sh
#   OLD=... NEW=... SIDE=initiator TYPES="blk scsi" DEPTHS="1 32 128" bench/ab.sh
#   OLD=target/release/vbdev NEW=target/release/vbdev ENV_NEW="VBDEV_DIRECT_MAX=0" bench/ab.sh
#
# Environment:
#   OLD, NEW      the two vbdev binaries (may be the same one, with ENV_OLD / ENV_NEW)
#   SIDE          what differs between the sides: pair (default: each side runs its own
#                 target and its own perf), initiator (both use NEW's target), target (both
#                 use NEW's perf)
#   ENV_OLD, ENV_NEW  space-separated VAR=value assignments for that side's processes
#   TYPES ("blk"), DEPTHS ("1 32"), WORKLOADS ("randread"; randwrite too), ROUNDS (5),
#   SECS (3), QUEUE_SIZE (512), QUEUES (1), TARGET_ARGS ("--null 1G"; the target always
#   polls), TARGET_CPU (0), INITIATOR_CPU (1), LOCK (a file to hold with flock -x while
#   measuring, e.g. /tmp/vbdev-bench.lock; none by default),
#   OUT (bench/runs/<date>-ab, with a time suffix if that exists)
#
# Method: per (type, workload, depth) cell, ROUNDS rounds; in each round both sides run once,
# the side that goes first alternating; every run is a fresh target pinned to TARGET_CPU and
# a fresh `vbdev perf` pinned to INITIATOR_CPU, the target's socket awaited before perf
# starts. The machine drifts between speed levels, so the summary gives, besides each side's
# median and min-max, the median of the per-round NEW/OLD ratios (two runs next to each other
# most often share a level). A failed run (no JSON result) counts as 0 and is listed; the
# script then exits 1.
set -euo pipefail

: "${OLD:?set OLD to the baseline vbdev binary}"
: "${NEW:?set NEW to the vbdev binary under test}"
SIDE=${SIDE:-pair}
ENV_OLD=${ENV_OLD:-}
ENV_NEW=${ENV_NEW:-}
TYPES=${TYPES:-blk}
DEPTHS=${DEPTHS:-"1 32"}
WORKLOADS=${WORKLOADS:-randread}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
QUEUE_SIZE=${QUEUE_SIZE:-512}
QUEUES=${QUEUES:-1}
TARGET_ARGS=${TARGET_ARGS:-"--null 1G"}
TARGET_CPU=${TARGET_CPU:-0}
INITIATOR_CPU=${INITIATOR_CPU:-1}
LOCK=${LOCK:-}
case $SIDE in pair | initiator | target) ;; *)
    echo "SIDE must be pair, initiator or target, not $SIDE" >&2
    exit 2
    ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OLD=$(realpath "$OLD")
NEW=$(realpath "$NEW")
for b in "$OLD" "$NEW"; do
    [[ -x $b ]] || {
        echo "not an executable: $b" >&2
        exit 2
    }
done
if [[ -z ${OUT:-} ]]; then
    OUT=$root/bench/runs/$(date -u +%Y-%m-%d)-ab
    [[ -e $OUT ]] && OUT=$OUT-$(date -u +%H%M%S)
fi
mkdir -p "$OUT"
raw=$OUT/raw.csv
echo "time,side,type,workload,qd,round,iops,avg_lat_us,load1" >"$raw"
work=$(mktemp -d /tmp/vbdev-ab.XXXXXX)
tpid=
failed=()
cleanup() {
    if [[ -n $tpid ]]; then kill -9 "$tpid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

{
    printf 'bench/ab.sh, %s UTC\n' "$(date -u '+%Y-%m-%d %H:%M:%S')"
    for v in OLD NEW SIDE ENV_OLD ENV_NEW TYPES DEPTHS WORKLOADS ROUNDS SECS QUEUE_SIZE QUEUES \
        TARGET_ARGS TARGET_CPU INITIATOR_CPU; do
        printf '%s=%q\n' "$v" "${!v}"
    done
} >"$OUT/command"
{
    for b in "$OLD" "$NEW"; do
        printf '%s: sha256 %s, %s\n' "$b" "$(sha256sum "$b" | cut -c1-16)" \
            "$("$b" --version 2>/dev/null | head -1)"
    done
    printf 'repository: %s\n' "$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)"
    printf 'kernel: %s; cpu: %s; %s CPUs\n' "$(uname -r)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(nproc)"
} >"$OUT/versions"

# run_one SIDE TYPE WORKLOAD QD ROUND: one fresh target and one fresh perf.
run_one() {
    local side=$1 type=$2 wl=$3 qd=$4 round=$5 tbin pbin envs out load i
    local sock=$work/t.sock
    envs=$ENV_OLD
    [[ $side == new ]] && envs=$ENV_NEW
    local bin=$OLD
    [[ $side == new ]] && bin=$NEW
    case $SIDE in
        pair) tbin=$bin pbin=$bin ;;
        initiator) tbin=$NEW pbin=$bin ;;
        target) tbin=$bin pbin=$NEW ;;
    esac
    load=$(cut -d' ' -f1 /proc/loadavg)
    rm -f "$sock"
    # shellcheck disable=SC2086 # ENV_* and TARGET_ARGS are word lists
    env $envs taskset -c "$TARGET_CPU" "$tbin" target --socket "$sock" --poll $TARGET_ARGS \
        --dev-type "$type" --queues "$QUEUES" >"$work/target.log" 2>&1 &
    tpid=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S $sock ]] && break
        kill -0 "$tpid" 2>/dev/null || break
        sleep 0.05
    done
    # shellcheck disable=SC2086
    out=$(env $envs taskset -c "$INITIATOR_CPU" "$pbin" perf --vhost-user "$sock" \
        --dev-type "$type" --queues "$QUEUES" --queue-size "$QUEUE_SIZE" -q "$qd" -o 4k \
        -w "$wl" -t "$SECS" --json 2>"$work/perf.err" |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["results"][0]; print("%d %.2f" % (round(j["iops"]), j["avg_latency_us"]))') || out=""
    kill -INT "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    tpid=
    if [[ -z $out ]]; then
        failed+=("$side $type $wl qd=$qd round $round: $(tail -1 "$work/perf.err" 2>/dev/null)")
        out="0 0"
    fi
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$(date -u +%H:%M:%S)" "$side" "$type" "$wl" "$qd" \
        "$round" "${out% *}" "${out#* }" "$load" | tee -a "$raw"
}

measure() {
    local type wl qd r side order
    for type in $TYPES; do
        for wl in $WORKLOADS; do
            for qd in $DEPTHS; do
                for ((r = 1; r <= ROUNDS; r++)); do
                    if ((r % 2)); then order="old new"; else order="new old"; fi
                    for side in $order; do
                        run_one "$side" "$type" "$wl" "$qd" "$r"
                    done
                done
            done
        done
    done
}

if [[ -n $LOCK ]]; then
    exec 9>"$LOCK"
    flock -x 9
fi
measure
if [[ -n $LOCK ]]; then flock -u 9; fi

python3 - "$raw" "$SIDE" >"$OUT/summary" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
side = sys.argv[2]
cells = {}
for r in rows:
    c = cells.setdefault((r["type"], r["workload"], int(r["qd"])), {})
    c.setdefault(r["side"], {})[int(r["round"])] = float(r["iops"])
what = {"pair": "each side its own target and perf", "initiator": "perf differs, NEW's target",
        "target": "target differs, NEW's perf"}[side]
print(f"vbdev perf against vbdev target --poll, 4 KiB; {what}")
print("IOPS: median (min-max) over the good runs; ratio: median NEW/OLD, and the median of per-round NEW/OLD")
print(f"{'type':5} {'workload':9} {'qd':>4} {'old':>26} {'new':>26} {'new/old':>8} {'per-round':>9}")
for key in sorted(cells):
    c = cells[key]
    def cell(s):
        v = [x for x in c.get(s, {}).values() if x > 0]
        if not v:
            return 0.0, "-"
        m = statistics.median(v)
        return m, f"{m/1e6:.3f}M ({min(v)/1e6:.2f}-{max(v)/1e6:.2f}) n{len(v)}"
    mo, so = cell("old")
    mn, sn = cell("new")
    per = [c["new"][r] / c["old"][r] for r in c.get("old", {})
           if c["old"][r] > 0 and c.get("new", {}).get(r, 0) > 0]
    pr = f"{statistics.median(per):.2f}" if per else "-"
    print(f"{key[0]:5} {key[1]:9} {key[2]:>4} {so:>26} {sn:>26} {(mn/mo if mo else 0):>8.2f} {pr:>9}")
PY
cat "$OUT/summary"
if ((${#failed[@]})); then
    printf 'failed run: %s\n' "${failed[@]}" | tee -a "$OUT/summary" >&2
    exit 1
fi
