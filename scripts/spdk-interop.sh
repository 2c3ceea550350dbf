#!/usr/bin/env bash
# Interoperability matrix between vbdev and stock SPDK (issue 15), both directions, on this
# machine. Prints one pass/fail row per check and exits 0 only when no row FAILs (N/A rows, checks
# that SPDK itself cannot run, do not count). Not part of scripts/test.sh: SPDK is on no package
# registry, so CI cannot run it.
#
#   SPDK_DIR=~/spdk scripts/spdk-interop.sh
#   SPDK_DIR=~/spdk VBDEV=./target/release/vbdev OUT=/tmp/interop scripts/spdk-interop.sh
#   SPDK_DIR=~/spdk PARTS=B LOCK=/tmp/vbdev-bench.lock scripts/spdk-interop.sh
#
# Needs root (hugepages, hugetlbfs mount), python3, timeout/flock/taskset (coreutils,
# util-linux), and an SPDK tree built with vhost and virtio (build/bin/vhost,
# build/examples/bdevperf, scripts/rpc.py), run as its users run it: `-u` (no PCI), hugepages.
#
# Environment:
#   SPDK_DIR        (required) the SPDK tree: build/bin/vhost, build/examples/bdevperf,
#                   scripts/rpc.py, python/, build/lib (LD_LIBRARY_PATH for shared builds).
#   VBDEV           vbdev binary to test. Default: `cargo build --release` in this repository,
#                   then ${CARGO_TARGET_DIR:-<repo>/target}/release/vbdev.
#   OUT             output directory (default bench/runs/<UTC date>-spdk-interop, with a time
#                   suffix if that exists): table.txt (the table as printed), rows.tsv,
#                   summary (versions, settings), logs/ (one log per row: every command, its
#                   output and exit code, and what the target logged during the row; plus each
#                   target process's whole log).
#   PARTS           which parts to run, any of "A B C" (default all three; see below).
#   VBDEV_OPTS      global options put before every vbdev initiator command of part A (io, perf,
#                   serve), e.g. "--hugetlb" or "--log debug". Default none: vbdev as users run it.
#   VBDEV_TIMEOUT_MS  --timeout-ms given to vbdev in the functional A rows (default 30000). The
#                   "attach, default timeout" rows use vbdev's own default instead, so a slow
#                   attach shows there and does not hide the other checks.
#   ATTACH_MAX_MS   attach time the "attach time" rows accept (default 1000, issue 15's goal).
#   SECS            run time of the perf/bdevperf rows (default 3).
#   RESET_SECS      run time of the `-w reset` rows (default 11): bdevperf and vbdev perf send
#                   their first reset 10 s into the run, so a shorter run resets nothing.
#   TARGET_CPU, INITIATOR_CPU  cores for the target side and the initiator side (0 and 1).
#   HUGE_MB         free 2 MiB hugepage memory to make sure of, in MiB (default 2048: SPDK's
#                   vhost takes 512, bdevperf 1024, both run at once in part C).
#   LOCK            a lock file shared with other users of the machine (e.g.
#                   /tmp/vbdev-bench.lock): the build runs under `flock -s`, each part that
#                   starts SPDK processes under one `flock -x` hold. Unset: no locking.
#   LOCK_WAIT       seconds to wait for LOCK (default 1800).
#
# What the script changes and restores on exit (also on failure and Ctrl-C): when fewer than
# HUGE_MB of hugepages are free it raises /proc/sys/vm/nr_hugepages and puts the old value back
# (only if nobody changed it meanwhile); it mounts a private hugetlbfs in its temporary directory
# and unmounts it. Every process it starts is stopped (TERM, then KILL after 10 s); sockets and
# temporary files live in one mktemp directory that is removed. Every wait is bounded.
#
# The rows (direction / target / check):
#  A. vbdev -> SPDK's vhost target (`vhost -m TARGET_CPU -s 512 -u -S DIR -r RPC`; malloc bdevs
#     of 64 MiB made with SPDK's rpc.py: vhost.scsi0 with target 0 = 512-byte blocks and target
#     1 = 4096-byte blocks, vhost.blk512 and vhost.blk4096). `vbdev` commands run pinned to
#     INITIATOR_CPU.
#     - setup: SPDK's vhost started, bdevs and controllers created.
#     - attach, default timeout: `vbdev io ... info` with vbdev's default --timeout-ms (scsi and
#       blk; vbdev backs DMA memory with huge pages by default when some are free, and this
#       script makes sure some are); attach time < ATTACH_MAX_MS: the wall time of that command;
#       attach --no-hugetlb: the same on 4 KiB pages, which SPDK v24.01 may crash on (it
#       touches the 2 MiB page below a region the kernel did not map 2 MiB-aligned): PASS when
#       vbdev attaches or refuses with advice to reserve huge pages; SPDK's crash there is
#       expected and noted, not a FAIL.
#     - per bdev (scsi t0 512 B, scsi t1 4096 B through `--bdev VirtioScsi0t1`, blk 512 B, blk
#       4096 B), each command a fresh vbdev process with --timeout-ms VBDEV_TIMEOUT_MS:
#       info --json (parsed: the bdev, its block size and size match SPDK's bdev),
#       write+read (write 64 KiB of 0xab at 1 MiB, read it back with --pattern 0xab),
#       flush, discard (64 KiB at 1 MiB), write-zeroes+read (zero the 64 KiB, read back with
#       --pattern 0x00). flush/discard/write-zeroes are N/A when `info --json` says the device
#       does not offer them.
#     - perf -w verify (-t SECS) and -w reset (-t RESET_SECS), -q 32 -o 4k: exit 0, every job
#       "finished" with I/O done and io_failed 0 (with reset: I/O aborted by a reset may fail, as
#       in bdevperf) (scsi: both LUN bdevs; blk512; verify on blk4096).
#     - serve: `vbdev serve -r RPC2 -S DIR` driven by SPDK's own scripts/rpc.py:
#       bdev_virtio_attach_controller -t user -a SOCK -d scsi|blk, bdev_get_bdevs (names and
#       block sizes), bdev_virtio_detach_controller (then the bdevs are gone). SPDK's rpc.py
#       cannot pass vbdev's `timeout_ms` extension, so these attaches run with vbdev's default
#       reply deadline.
#  B. SPDK's stock bdevperf (`-m INITIATOR_CPU -g -s 1024 -u --json cfg -q 32 -o 4096 -w W`, cfg:
#     bdev_virtio_attach_controller trtype user, vq_count 2, vq_size 512) -> vbdev's own target
#     (`vbdev target --malloc 256M --queues 2`, scsi with `--targets 2`), a fresh target per row:
#     W = verify, reset (-t RESET_SECS), unmap, write_zeroes. PASS: exit 0, a Total line with
#     IOPS > 0 and no failed or timed-out I/O; with reset, I/O that SPDK's bdev layer aborts
#     while a reset runs counts as failed in bdevperf's table without failing the run (so too
#     against SPDK's own target) and is accepted, a failed reset ("Reset blockdev=... failed",
#     exit != 0) is not. N/A where SPDK's bdev_virtio cannot run the workload
#     (module/bdev/virtio/bdev_virtio_{blk,scsi}.c io_type_supported): unmap when the device
#     offers no VIRTIO_BLK_F_DISCARD / no LBPU in the thin-provisioning VPD page (bdevperf
#     prints "Skipping ... does not support unmap"). Notes in the reasons: bdev_virtio never
#     claims WRITE_ZEROES, so SPDK's bdev layer turns write_zeroes into WRITEs of zeros; the blk
#     bdev completes a RESET at once without sending anything (only scsi sends LUN RESET).
#  C. The same bdevperf rows against SPDK's own vhost target (512-byte malloc bdevs): a check
#     that the harness works, and what SPDK does with itself.
#
# When SPDK's vhost dies during a row of A or C, that row FAILs saying how ("SPDK's vhost was
# killed by SIGSEGV during this row; ..."), and the next row starts a new vhost with the same
# bdevs and sockets (at most 20 times per part), so one crash hides no other result.
set -uo pipefail
ulimit -c 0 # a crashing SPDK process would otherwise drop a core file in the caller's directory

case ${1:-} in
    -h | --help)
        sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "spdk-interop.sh: no arguments expected (settings are environment variables; --help)" >&2
        exit 2
        ;;
esac

die() {
    echo "spdk-interop.sh: $*" >&2
    exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---------------------------------------------------------------- settings and prerequisites

if [[ -z ${SPDK_DIR:-} ]]; then
    die "SPDK_DIR is not set: point it at a built SPDK tree (one with build/bin/vhost, build/examples/bdevperf and scripts/rpc.py), e.g. SPDK_DIR=\$HOME/spdk $0"
fi
[[ -d $SPDK_DIR ]] || die "SPDK_DIR=$SPDK_DIR: no such directory"
SPDK_DIR=$(cd "$SPDK_DIR" && pwd)
spdk_vhost=$SPDK_DIR/build/bin/vhost
spdk_bdevperf=$SPDK_DIR/build/examples/bdevperf
spdk_rpc_py=$SPDK_DIR/scripts/rpc.py
for f in "$spdk_vhost" "$spdk_bdevperf"; do
    [[ -x $f ]] || die "$f is missing or not executable: build SPDK with vhost and virtio (./configure --with-vhost --with-virtio; make)"
done
[[ -f $spdk_rpc_py ]] || die "$spdk_rpc_py is missing"

PARTS=${PARTS:-"A B C"}
VBDEV_TIMEOUT_MS=${VBDEV_TIMEOUT_MS:-30000}
ATTACH_MAX_MS=${ATTACH_MAX_MS:-1000}
SECS=${SECS:-3}
RESET_SECS=${RESET_SECS:-11}
TARGET_CPU=${TARGET_CPU:-0}
INITIATOR_CPU=${INITIATOR_CPU:-1}
HUGE_MB=${HUGE_MB:-2048}
LOCK_WAIT=${LOCK_WAIT:-1800}
for v in VBDEV_TIMEOUT_MS ATTACH_MAX_MS SECS RESET_SECS TARGET_CPU INITIATOR_CPU HUGE_MB LOCK_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v} is not a whole number"
done
for p in $PARTS; do
    [[ $p == A || $p == B || $p == C ]] || die "PARTS=$PARTS: parts are A, B and C"
done
target_mask=$(printf '0x%x' $((1 << TARGET_CPU)))
initiator_mask=$(printf '0x%x' $((1 << INITIATOR_CPU)))

for tool in python3 timeout flock taskset mount umount; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found in PATH"
done
[[ $(id -u) -eq 0 ]] || die "run as root: SPDK needs hugepages and this script mounts a private hugetlbfs"

if [[ -n ${LOCK:-} ]]; then
    exec {lock_fd}>>"$LOCK" || die "cannot open LOCK=$LOCK"
fi

if [[ -z ${VBDEV:-} ]]; then
    echo "==> building vbdev (cargo build --release)"
    build=(cargo build --release --manifest-path "$root/Cargo.toml" -p vbdev)
    if [[ -n ${LOCK:-} ]]; then
        flock -s -w "$LOCK_WAIT" "$LOCK" "${build[@]}" || die "cargo build failed"
    else
        "${build[@]}" || die "cargo build failed"
    fi
    VBDEV=${CARGO_TARGET_DIR:-$root/target}/release/vbdev
    [[ $VBDEV == /* ]] || VBDEV=$PWD/$VBDEV # cargo takes a relative CARGO_TARGET_DIR from the cwd
fi
[[ -x $VBDEV ]] || die "VBDEV=$VBDEV is not an executable"

if [[ -z ${OUT:-} ]]; then
    OUT=$root/bench/runs/$(date -u +%Y-%m-%d)-spdk-interop
    [[ -e $OUT ]] && OUT=$OUT-$(date -u +%H%M%S)
fi
mkdir -p "$OUT/logs" || die "cannot create OUT=$OUT"
OUT=$(cd "$OUT" && pwd)
logdir=$OUT/logs
rm -f "$logdir"/*.log "$OUT/rows.tsv" "$OUT/table.txt" "$OUT/summary"

# ---------------------------------------------------------------- cleanup and processes

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vbdev-spdk-interop.XXXXXX") || die "mktemp failed"
if ((${#tmp} > 70)); then
    rmdir "$tmp"
    die "TMPDIR=$TMPDIR is too long a path for the Unix sockets inside it (108 bytes); use a shorter one"
fi
hugedir=$tmp/hugepages
huge_mounted=false
huge_nr_old=
huge_nr_set=
pids=()       # every process started and not yet reaped
cleaned=false

# alive PID: the process exists and is not a zombie (our exited children stay zombies until
# waited for, and kill -0 still succeeds on them).
alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}

forget_pid() {
    local p keep=()
    for p in "${pids[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    pids=("${keep[@]}")
}

# stop_pid PID [group]: TERM (to the process group with "group"), at most 10 s, then KILL; reap.
stop_pid() {
    local pid=$1 target=$1 i
    [[ ${2:-} == group ]] && target=-$1
    if alive "$pid"; then
        kill -TERM -- "$target" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 200; i++)); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            echo "spdk-interop.sh: pid $pid did not stop within 10 s of SIGTERM, killing it" >&2
            kill -KILL -- "$target" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
}

# sanitize: the output names no paths of this machine: the temporary directory, SPDK_DIR, the
# vbdev binary and the repository become $TMP, $SPDK_DIR, $VBDEV and $REPO.
sanitize() {
    python3 - "$OUT" "$tmp=\$TMP" "$VBDEV=\$VBDEV" "$SPDK_DIR=\$SPDK_DIR" "$root=\$REPO" <<'EOF'
import os, sys
out, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
for d, _, files in os.walk(out):
    for f in files:
        p = os.path.join(d, f)
        text = open(p, errors="replace").read()
        new = text
        for old, name in pairs:
            new = new.replace(old, name)
        if new != text:
            open(p, "w").write(new)
EOF
}

cleanup() {
    $cleaned && return
    cleaned=true
    local p
    for p in "${pids[@]}"; do
        # Bounded commands run under timeout(1), which leads its own process group.
        if [[ -e $tmp/pgid.$p ]]; then stop_pid "$p" group; else stop_pid "$p"; fi
    done
    # DPDK's runtime directories of the SPDK processes we ran (their EAL line names them).
    grep -h -o -- '--file-prefix=spdk_pid[0-9]*' "$logdir"/*.log 2>/dev/null | sort -u |
        while read -r p; do
            p=${p#--file-prefix=}
            [[ -d /var/run/dpdk/$p ]] && rm -rf "/var/run/dpdk/${p:?}"
        done
    sanitize
    if $huge_mounted; then
        umount "$hugedir" || echo "spdk-interop.sh: could not unmount $hugedir" >&2
    fi
    if [[ -n $huge_nr_set ]]; then
        if [[ $(cat /proc/sys/vm/nr_hugepages) == "$huge_nr_set" ]]; then
            echo "$huge_nr_old" >/proc/sys/vm/nr_hugepages
        else
            echo "spdk-interop.sh: nr_hugepages changed by someone else meanwhile; left as it is" >&2
        fi
    fi
    if mountpoint -q "$hugedir" 2>/dev/null; then
        echo "spdk-interop.sh: $hugedir is still mounted; leaving $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'echo "spdk-interop.sh: interrupted" >&2; exit 130' INT
trap 'echo "spdk-interop.sh: terminated" >&2; exit 143' TERM
trap 'exit 129' HUP

# start_bg LOG CMD...: start a long-running process (a target) with its output appended to LOG;
# its pid is in BG_PID.
start_bg() {
    local log=$1
    shift
    printf '\n$ %s\n' "$*" >>"$log"
    "$@" >>"$log" 2>&1 </dev/null &
    BG_PID=$!
    pids+=("$BG_PID")
}

# wait_socket PATH PID SECONDS: wait until PATH is a socket, while PID lives, at most SECONDS.
wait_socket() {
    local path=$1 pid=$2 deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        [[ -S $path ]] && return 0
        alive "$pid" || return 1
        sleep 0.05
    done
    [[ -S $path ]]
}

now_ms() { date +%s%3N; }

# run LIMIT CMD...: run CMD bounded by LIMIT seconds (then TERM, KILL 5 s later); stdout in
# $tmp/stdout, stderr in $tmp/stderr, both appended to the row log. Sets RC and MS (wall ms).
# CMD runs in the background and is waited for, so Ctrl-C reaches the traps at once.
run() {
    local limit=$1 p t0
    shift
    printf '\n$ %s\n' "$*" >>"$row_log"
    t0=$(now_ms)
    timeout -k 5 "$limit" "$@" >"$tmp/stdout" 2>"$tmp/stderr" </dev/null &
    p=$!
    pids+=("$p")
    : >"$tmp/pgid.$p"
    wait "$p"
    RC=$?
    MS=$(($(now_ms) - t0))
    forget_pid "$p"
    rm -f "$tmp/pgid.$p"
    {
        [[ -s $tmp/stdout ]] && { echo "--- stdout"; cat "$tmp/stdout"; }
        [[ -s $tmp/stderr ]] && { echo "--- stderr"; cat "$tmp/stderr"; }
        echo "--- exit $RC after $MS ms$( ((RC == 124)) && echo " (timed out: limit ${limit} s)")"
    } >>"$row_log"
    return 0
}

# why: one line saying why the last `run` failed.
why() {
    if ((RC == 124 || RC == 137)); then
        echo "no answer within the script's ${1:-?} s limit (exit $RC)"
        return
    fi
    local line
    # rpc.py prints the JSON-RPC error object; its "message" says what went wrong.
    line=$(grep -h -m1 -o '"message": ".*"' "$tmp/stdout" "$tmp/stderr" 2>/dev/null | head -n1)
    [[ -n $line ]] && line="JSON-RPC error: ${line#\"message\": }"
    [[ -z $line ]] && line=$(grep -h -i -m1 -E 'error|fail|cannot|refus|not offer|timed out|did not|mismatch|invalid|unsupported|not supported|panic' "$tmp/stderr" "$tmp/stdout" 2>/dev/null | head -n1)
    [[ -z $line ]] && line=$(cat "$tmp/stderr" "$tmp/stdout" 2>/dev/null | grep -v '^\s*$' | tail -n1)
    line=$(echo "$line" | tr -s ' \t' ' ' | sed 's/^ //')
    echo "exit $RC: ${line:0:200}"
}

# ---------------------------------------------------------------- rows

nrow=0
nfail=0
npass=0
nna=0
row_log=/dev/null
tlog=/dev/null # log of the target process of the current rows
tlog_off=0
row_dir='' row_target='' row_check=''
fmt='%-3s %-26s %-24s %-40s %-4s %s\n'

begin_row() {
    if [[ -n $vhost_keep ]] && ! alive "$VHOST_PID"; then
        restart_vhost
    fi
    row_dir=$1 row_target=$2 row_check=$3
    nrow=$((nrow + 1))
    local slug
    slug=$(echo "$row_dir $row_target $row_check" | tr -c 'A-Za-z0-9.\n-' '_' | tr -s '_' | cut -c1-90)
    row_log=$(printf '%s/%03d-%s.log' "$logdir" "$nrow" "$slug")
    printf '# row %d: %s | %s | %s\n' "$nrow" "$row_dir" "$row_target" "$row_check" >"$row_log"
    tlog_off=$(stat -c %s "$tlog" 2>/dev/null || echo 0)
}

end_row() {
    local status=$1 reason=$2
    if vhost_death; then
        if $vhost_death_ok; then
            reason+=" (SPDK's vhost $VHOST_DEATH: expected in this row)"
        else
            status=FAIL
            reason="SPDK's vhost $VHOST_DEATH during this row; $reason"
        fi
    fi
    vhost_death_ok=false
    case $status in
        PASS) npass=$((npass + 1)) ;;
        FAIL) nfail=$((nfail + 1)) ;;
        N/A) nna=$((nna + 1)) ;;
    esac
    if [[ -f $tlog && $tlog != /dev/null ]]; then
        {
            printf '\n--- target log during this row (%s)\n' "${tlog#"$OUT"/}"
            tail -c +$((tlog_off + 1)) "$tlog"
        } >>"$row_log"
    fi
    printf '\n# result: %s: %s\n' "$status" "$reason" >>"$row_log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$nrow" "$row_dir" "$row_target" "$row_check" "$status" "$reason" >>"$OUT/rows.tsv"
    # shellcheck disable=SC2059
    printf "$fmt" "$nrow" "$row_dir" "$row_target" "$row_check" "$status" "$reason" | tee -a "$OUT/table.txt"
}

# one_row DIR TARGET CHECK STATUS REASON: a row with no command of its own.
one_row() {
    begin_row "$1" "$2" "$3"
    end_row "$4" "$5"
}

# ---------------------------------------------------------------- SPDK helpers

spdk_env=(env "LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "PYTHONPATH=$SPDK_DIR/python${PYTHONPATH:+:$PYTHONPATH}")

# rpc SOCK METHOD ARGS...: SPDK's own rpc.py, bounded (inside `run`).
rpc() {
    local sock=$1
    shift
    run 90 "${spdk_env[@]}" python3 "$spdk_rpc_py" -s "$sock" -t 60 "$@"
}

# start_spdk_vhost NAME: SPDK's vhost target on TARGET_CPU; sets VHOST_PID, VHOST_RPC,
# VHOST_DIR, tlog. Returns 1 (with a reason in START_WHY) if it does not come up.
start_spdk_vhost() {
    VHOST_DIR=$tmp/$1
    VHOST_RPC=$tmp/$1.rpc
    mkdir -p "$VHOST_DIR"
    tlog=$logdir/$1.log
    start_bg "$tlog" "${spdk_env[@]}" "$spdk_vhost" -m "$target_mask" -s 512 -u \
        --huge-dir "$hugedir" -S "$VHOST_DIR" -r "$VHOST_RPC"
    VHOST_PID=$BG_PID
    if ! wait_socket "$VHOST_RPC" "$VHOST_PID" 60; then
        START_WHY="SPDK vhost did not create its RPC socket within 60 s: $(grep -v '^\s*$' "$tlog" | tail -n1)"
        return 1
    fi
    rpc "$VHOST_RPC" framework_wait_init
    if ((RC != 0)); then
        START_WHY="framework_wait_init: $(why 90)"
        return 1
    fi
    return 0
}

# A part that needs SPDK's vhost through many rows keeps it running: vhost_keep names the
# function that configures it (bdevs, controllers), vhost_name its log name. When it dies during
# a row, that row FAILs saying how (vhost_death), and the next row starts a new one with the same
# sockets (restart_vhost), at most MAX_RESTARTS times per part, so one crash hides no other row.
vhost_keep=''
vhost_name=''
vhost_death_ok=false # set for one row in which SPDK's vhost may die (its own bug, not ours)
vhost_restarts=0
VHOST_PID=0
MAX_RESTARTS=20

# vhost_death: if the kept vhost has died, reap it, note how in VHOST_DEATH and its log, and
# succeed (once per death).
vhost_death() {
    [[ -n $vhost_keep && $VHOST_PID != 0 ]] || return 1
    alive "$VHOST_PID" && return 1
    local st
    wait "$VHOST_PID" 2>/dev/null
    st=$?
    forget_pid "$VHOST_PID"
    if ((st > 128)); then
        VHOST_DEATH="was killed by SIG$(kill -l $((st - 128)))"
    else
        VHOST_DEATH="exited with status $st"
    fi
    printf '*** spdk-interop.sh: SPDK vhost (pid %s) %s\n' "$VHOST_PID" "$VHOST_DEATH" >>"$tlog"
    VHOST_PID=0
    return 0
}

restart_vhost() {
    vhost_death
    if ((vhost_restarts >= MAX_RESTARTS)); then
        return
    fi
    vhost_restarts=$((vhost_restarts + 1))
    row_log=$logdir/$vhost_name-restart-$vhost_restarts.log
    : >"$row_log"
    echo "==> SPDK's vhost is not running (${VHOST_DEATH:-?}): restart $vhost_restarts of at most $MAX_RESTARTS" | tee -a "$OUT/table.txt"
    rm -f "$VHOST_DIR"/* "$VHOST_RPC" "$VHOST_RPC.lock"
    if ! start_spdk_vhost "$vhost_name" || ! "$vhost_keep"; then
        echo "==> the restart failed: $START_WHY" | tee -a "$OUT/table.txt"
        alive "$VHOST_PID" && stop_pid "$VHOST_PID"
        VHOST_PID=0
    fi
}

# spdk_setup_step DESCRIPTION RPC-ARGS...: one setup RPC; on failure sets START_WHY.
spdk_setup_step() {
    local what=$1
    shift
    rpc "$VHOST_RPC" "$@"
    if ((RC != 0)); then
        START_WHY="$what: $(why 90)"
        return 1
    fi
}

# bdevperf_row DIR TARGET DEVTYPE SOCK WORKLOAD: one bdevperf run and its row.
bdevperf_row() {
    local dir=$1 target=$2 dev=$3 sock=$4 w=$5 secs=$SECS name cfg note=
    [[ $w == reset ]] && secs=$RESET_SECS
    begin_row "$dir" "$target" "bdevperf -w $w -t $secs"
    if [[ $dev == scsi ]]; then name=VirtioScsi0; else name=VirtioBlk0; fi
    cfg=$tmp/bdevperf-$dev.json
    cat >"$cfg" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_virtio_attach_controller",
  "params": {"name": "$name", "trtype": "user", "traddr": "$sock", "dev_type": "$dev",
             "vq_count": 2, "vq_size": 512}}]}]}
EOF
    cat "$cfg" >>"$row_log"
    # Its own runtime dir and PID-based file prefix; under timeout, so it is this pid's child.
    run $((secs + 60)) "${spdk_env[@]}" "$spdk_bdevperf" -m "$initiator_mask" -g -s 1024 -u \
        --huge-dir "$hugedir" --json "$cfg" -q 32 -o 4096 -w "$w" -t "$secs"
    local verdict
    verdict=$(python3 - "$tmp/stdout" "$tmp/stderr" "$RC" "$w" "$dev" <<'EOF'
import re, sys
out = open(sys.argv[1], errors="replace").read() + open(sys.argv[2], errors="replace").read()
rc, w, dev = int(sys.argv[3]), sys.argv[4], sys.argv[5]
skip = re.findall(r"Skipping (\S+) because it does not support (\w+)", out)
if skip and w == "unmap":
    why = "no VIRTIO_BLK_F_DISCARD" if dev == "blk" else "no LBPU in VPD page B2h"
    print("N/A\tbdev_virtio io_type_supported(UNMAP) is false for " +
          ", ".join(s[0] for s in skip) + f" ({why}): bdevperf skips it")
    sys.exit()
m = re.search(r"^\s*Total\s*:([-0-9. \t]+)$", out, re.M)
# Total: IOPS MiB/s Fail/s TO/s Average min max (a job line has runtime(s) first).
nums = [float(x) for x in m.group(1).split()] if m else []
if len(nums) == 8:
    nums = nums[1:]
if len(nums) != 7:
    m = None
errs = [l.strip() for l in out.splitlines()
        if re.search(r"\*ERROR\*|failed|Failed|error", l) and "Fail/s" not in l]
if rc != 0 or m is None:
    reason = errs[0] if errs else (out.strip().splitlines() or ["no output"])[-1].strip()
    print(f"FAIL\texit {rc}: {reason[:200]}")
    sys.exit()
iops, fails, tos = nums[0], nums[2], nums[3]
jobs = sorted(set(re.findall(r"Job: (\S+) \(Core Mask", out)))
resets = re.findall(r"Reset blockdev=\S+ failed", out)
# In -w reset, I/O submitted while a reset runs is aborted by SPDK's bdev layer and bdevperf
# counts it as failed without failing the run (it does so against SPDK's own target too); a
# failed reset itself ends the run ("Reset blockdev=... failed", exit != 0).
if iops <= 0 or tos > 0 or resets or (fails > 0 and w != "reset"):
    print(f"FAIL\tTotal {iops:.0f} IOPS, {fails:.1f} failed/s, {tos:.1f} timed out/s ({', '.join(jobs)}) {' '.join(resets)}")
    sys.exit()
failed = f"{fails:.0f} failed/s (aborted during the reset)" if fails else "0 failed"
print(f"PASS\t{iops/1e3:.0f}k IOPS, {failed} ({', '.join(jobs)})")
EOF
)
    local status=${verdict%%$'\t'*} reason=${verdict#*$'\t'}
    [[ -z $verdict ]] && status=FAIL reason="could not read bdevperf's output (exit $RC)"
    if [[ $status == PASS ]]; then
        [[ $w == write_zeroes ]] && note="; bdev_virtio has no WRITE_ZEROES: SPDK's bdev layer sent zero WRITEs"
        [[ $w == reset && $dev == blk ]] && note="; bdev_virtio_blk completes RESET itself, nothing reaches the target"
        [[ $w == reset && $dev == scsi ]] && note="; LUN RESET TMFs answered"
    fi
    end_row "$status" "$reason$note"
}

# ---------------------------------------------------------------- hugepages

setup_hugepages() {
    local size_kb free total need
    size_kb=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo)
    [[ $size_kb == 2048 ]] || die "default hugepage size is ${size_kb} kB; this script expects 2048 kB"
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    total=$(cat /proc/sys/vm/nr_hugepages)
    need=$((HUGE_MB / 2))
    if ((free < need)); then
        huge_nr_old=$total
        echo $((total + need - free)) >/proc/sys/vm/nr_hugepages
        huge_nr_set=$(cat /proc/sys/vm/nr_hugepages)
        free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        ((free >= need)) || die "asked for $need free 2 MiB hugepages, the kernel gave $free (nr_hugepages $huge_nr_set)"
    fi
    mkdir -p "$hugedir"
    mount -t hugetlbfs -o pagesize=2M nodev "$hugedir" || die "cannot mount hugetlbfs on $hugedir"
    huge_mounted=true
}

lock_waited=0
lock_ex() {
    [[ -z ${LOCK:-} ]] && return 0
    local t0=$SECONDS
    echo "==> waiting for an exclusive lock on $LOCK (at most $LOCK_WAIT s)"
    flock -x -w "$LOCK_WAIT" "$lock_fd" || die "no exclusive lock on $LOCK within $LOCK_WAIT s"
    lock_waited=$((lock_waited + SECONDS - t0))
}
unlock() {
    [[ -z ${LOCK:-} ]] && return 0
    flock -u "$lock_fd"
}

# ---------------------------------------------------------------- part A

read -r -a vbdev_opts <<<"${VBDEV_OPTS:-}"
vb=(taskset -c "$INITIATOR_CPU" "$VBDEV" "${vbdev_opts[@]}")

# A rows for one bdev: DEV SOCK BDEV(--bdev value or "") LABEL BLOCK_SIZE
a_bdev_rows() {
    local dev=$1 sock=$2 bdev=$3 label=$4 bs=$5 d="vbdev -> SPDK vhost"
    local io=("${vb[@]}" io --vhost-user "$sock" --dev-type "$dev" --timeout-ms "$VBDEV_TIMEOUT_MS")
    local sel=() lim=$((VBDEV_TIMEOUT_MS * 3 / 1000 + 30)) t="(--timeout-ms $VBDEV_TIMEOUT_MS)"
    local want=$bdev
    [[ -n $bdev ]] && sel=(--bdev "$bdev")
    [[ -z $want ]] && { if [[ $dev == scsi ]]; then want=VirtioScsi0t0; else want=VirtioBlk0; fi; }
    local has_flush=unknown has_unmap=unknown has_wz=unknown st reason

    begin_row "$d" "$label" "io ${sel[*]:+${sel[*]} }info --json"
    run "$lim" "${io[@]}" info "${sel[@]}" --json
    if ((RC != 0)); then
        end_row FAIL "$(why "$lim") $t"
    else
        local verdict
        verdict=$(python3 - "$tmp/stdout" "$want" "$bs" "$((64 << 20))" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except ValueError as e:
    print(f"FAIL\toutput is not JSON: {e}\t-\t-\t-"); sys.exit()
bdevs = doc["bdevs"] if "bdevs" in doc else [doc]
want, bs, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = next((b for b in bdevs if b.get("name") == want), None)
names = ", ".join(str(x.get("name")) for x in bdevs)
if b is None:
    print(f"FAIL\tno bdev {want} (bdevs: {names})\t-\t-\t-"); sys.exit()
got = (b.get("block_size"), b.get("num_blocks", 0) * b.get("block_size", 0))
fl = lambda k: "yes" if b.get(k) else "no"
flags = f"flush={b.get('flush')} unmap={b.get('unmap')} write_zeroes={b.get('write_zeroes')}"
if got != (bs, size):
    print(f"FAIL\t{want}: block_size {got[0]}, {got[1]} bytes; SPDK's bdev has {bs}, {size}\t{fl('flush')}\t{fl('unmap')}\t{fl('write_zeroes')}")
else:
    print(f"PASS\tbdevs: {names}; {want}: {bs} B blocks, {size >> 20} MiB, {flags}\t{fl('flush')}\t{fl('unmap')}\t{fl('write_zeroes')}")
EOF
)
        IFS=$'\t' read -r st reason has_flush has_unmap has_wz <<<"$verdict"
        end_row "${st:-FAIL}" "${reason:-could not parse the JSON} $t"
    fi

    begin_row "$d" "$label" "write 0xab + read --pattern 0xab"
    run "$lim" "${io[@]}" write "${sel[@]}" --offset 1048576 --pattern 0xab --length 65536
    if ((RC != 0)); then
        end_row FAIL "write: $(why "$lim") $t"
    else
        run "$lim" "${io[@]}" read "${sel[@]}" --offset 1048576 --length 65536 --pattern 0xab
        if ((RC != 0)); then end_row FAIL "read: $(why "$lim") $t"; else end_row PASS "64 KiB at 1 MiB written and read back $t"; fi
    fi

    begin_row "$d" "$label" "flush"
    if [[ $has_flush == no ]]; then
        end_row N/A "the device offers no flush (info --json: flush=false)"
    else
        run "$lim" "${io[@]}" flush "${sel[@]}"
        if ((RC != 0)); then end_row FAIL "$(why "$lim") $t"; else end_row PASS "ok $t"; fi
    fi

    begin_row "$d" "$label" "discard"
    if [[ $has_unmap == no ]]; then
        end_row N/A "the device offers no discard/unmap (info --json: unmap=false)"
    else
        run "$lim" "${io[@]}" discard "${sel[@]}" --offset 1048576 --length 65536
        if ((RC != 0)); then end_row FAIL "$(why "$lim") $t"; else end_row PASS "64 KiB at 1 MiB $t"; fi
    fi

    begin_row "$d" "$label" "write-zeroes + read --pattern 0x00"
    if [[ $has_wz == no ]]; then
        end_row N/A "the device offers no write-zeroes (info --json: write_zeroes=false)"
    else
        # The range holds 0xab from the write row (or whatever discard left): make sure it is
        # not zero before zeroing it, so reading zeros back proves something.
        run "$lim" "${io[@]}" write "${sel[@]}" --offset 1048576 --pattern 0xab --length 65536
        if ((RC != 0)); then
            end_row FAIL "write 0xab before: $(why "$lim") $t"
        else
            run "$lim" "${io[@]}" write-zeroes "${sel[@]}" --offset 1048576 --length 65536
            if ((RC != 0)); then
                end_row FAIL "write-zeroes: $(why "$lim") $t"
            else
                run "$lim" "${io[@]}" read "${sel[@]}" --offset 1048576 --length 65536 --pattern 0x00
                if ((RC != 0)); then end_row FAIL "read: $(why "$lim") $t"; else end_row PASS "64 KiB of 0xab zeroed and read back as zeros $t"; fi
            fi
        fi
    fi
}

# A perf row: DEV SOCK LABEL WORKLOAD
a_perf_row() {
    local dev=$1 sock=$2 label=$3 w=$4 secs=$SECS
    [[ $w == reset ]] && secs=$RESET_SECS
    local lim=$((secs + VBDEV_TIMEOUT_MS * 3 / 1000 + 30)) t="(--timeout-ms $VBDEV_TIMEOUT_MS)"
    begin_row "vbdev -> SPDK vhost" "$label" "perf -q 32 -o 4k -w $w -t $secs"
    run "$lim" "${vb[@]}" perf --vhost-user "$sock" --dev-type "$dev" --timeout-ms "$VBDEV_TIMEOUT_MS" \
        -q 32 -o 4k -w "$w" -t "$secs" --json
    if ((RC != 0)); then
        end_row FAIL "$(why "$lim") $t"
        return
    fi
    local verdict
    verdict=$(python3 - "$tmp/stdout" "$w" <<'EOF'
import json, sys
reset = sys.argv[2] == "reset"
try:
    doc = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    res = doc["results"]
except (ValueError, KeyError, IndexError) as e:
    print(f"FAIL\tno result JSON: {e}"); sys.exit()
bad = [f"{r.get('job')}: status {r.get('status')}, iops {r.get('iops')}, io_failed {r.get('io_failed')}, io_timeout {r.get('io_timeout')}"
       for r in res if r.get("status") != "finished" or not r.get("iops") or r.get("io_timeout")
       or (r.get("io_failed") and not reset)]
if not res or bad:
    print("FAIL\t" + ("; ".join(bad) or "no jobs")); sys.exit()
failed = sum(r.get("io_failed") or 0 for r in res)
print("PASS\t" + ", ".join(f"{r['job']} {r['iops']/1e3:.0f}k IOPS" for r in res) +
      (f", {failed} I/O failed (aborted during resets)" if failed else ", 0 failed"))
EOF
)
    end_row "${verdict%%$'\t'*}" "${verdict#*$'\t'} $t"
}

# A serve rows: DEV SOCK LABEL NAME EXPECTED("bdev:bs bdev:bs")
a_serve_rows() {
    local dev=$1 sock=$2 label=$3 name=$4 expect=$5 d="SPDK rpc.py -> vbdev serve"
    local srpc=$tmp/serve.rpc
    begin_row "$d" "$label" "bdev_virtio_attach_controller"
    if ! alive "${SERVE_PID:-0}"; then
        end_row FAIL "vbdev serve is not running (see ${slog#"$OUT"/})"
        one_row "$d" "$label" "bdev_get_bdevs" FAIL "no attach"
        one_row "$d" "$label" "bdev_virtio_detach_controller" FAIL "no attach"
        return
    fi
    rpc "$srpc" bdev_virtio_attach_controller -t user -a "$sock" -d "$dev" "$name"
    local attach_rc=$RC attach_ms=$MS
    if ((RC != 0)); then
        local r
        r=$(why 90)
        [[ $r == *within* || $r == *"timed out"* ]] && r+=" (SPDK's rpc.py cannot pass vbdev's timeout_ms)"
        end_row FAIL "$r"
    else
        end_row PASS "answered $(tr -d '\n ' <"$tmp/stdout" | cut -c1-80) in $attach_ms ms"
    fi

    begin_row "$d" "$label" "bdev_get_bdevs"
    rpc "$srpc" bdev_get_bdevs
    if ((RC != 0)); then
        end_row FAIL "$(why 90)"
    else
        local verdict
        verdict=$(python3 - "$tmp/stdout" "$expect" <<'EOF'
import json, sys
try:
    bdevs = json.load(open(sys.argv[1]))
except ValueError as e:
    print(f"FAIL\tnot JSON: {e}"); sys.exit()
have = {b.get("name"): b.get("block_size") for b in bdevs}
want = dict((p.split(":")[0], int(p.split(":")[1])) for p in sys.argv[2].split())
bad = [f"{n}: want {bs} B, have {have.get(n)}" for n, bs in want.items() if have.get(n) != bs]
got = ", ".join(f"{n} ({bs} B)" for n, bs in have.items()) or "none"
print(("FAIL\t" + "; ".join(bad) + f" (bdevs: {got})") if bad else f"PASS\t{got}")
EOF
)
        end_row "${verdict%%$'\t'*}" "${verdict#*$'\t'}"
    fi

    begin_row "$d" "$label" "bdev_virtio_detach_controller"
    if ((attach_rc != 0)); then
        end_row FAIL "not attached (attach failed)"
        return
    fi
    rpc "$srpc" bdev_virtio_detach_controller "$name"
    if ((RC != 0)); then
        end_row FAIL "$(why 90)"
        return
    fi
    rpc "$srpc" bdev_get_bdevs
    if ((RC != 0)); then
        end_row FAIL "bdev_get_bdevs after detach: $(why 90)"
    elif python3 -c 'import json,sys; sys.exit(0 if not any(b.get("name","").startswith(sys.argv[2]) for b in json.load(open(sys.argv[1]))) else 1)' "$tmp/stdout" "$name"; then
        end_row PASS "detached; no $name bdev left"
    else
        end_row FAIL "detach answered, but bdev_get_bdevs still lists $name bdevs"
    fi
}

# configure_a: part A's bdevs and controllers in a started SPDK vhost (START_WHY on failure).
configure_a() {
    spdk_setup_step "bdev_malloc_create Malloc0" bdev_malloc_create -b Malloc0 64 512 &&
        spdk_setup_step "bdev_malloc_create Malloc1" bdev_malloc_create -b Malloc1 64 4096 &&
        spdk_setup_step "bdev_malloc_create Malloc2" bdev_malloc_create -b Malloc2 64 512 &&
        spdk_setup_step "bdev_malloc_create Malloc3" bdev_malloc_create -b Malloc3 64 4096 &&
        spdk_setup_step "vhost_create_scsi_controller" vhost_create_scsi_controller --cpumask "$target_mask" vhost.scsi0 &&
        spdk_setup_step "vhost_scsi_controller_add_target 0" vhost_scsi_controller_add_target vhost.scsi0 0 Malloc0 &&
        spdk_setup_step "vhost_scsi_controller_add_target 1" vhost_scsi_controller_add_target vhost.scsi0 1 Malloc1 &&
        spdk_setup_step "vhost_create_blk_controller 512" vhost_create_blk_controller --cpumask "$target_mask" vhost.blk512 Malloc2 &&
        spdk_setup_step "vhost_create_blk_controller 4096" vhost_create_blk_controller --cpumask "$target_mask" vhost.blk4096 Malloc3 &&
        check_sockets vhost.scsi0 vhost.blk512 vhost.blk4096
}

# configure_c: part C's bdevs and controllers.
configure_c() {
    spdk_setup_step "bdev_malloc_create Malloc0" bdev_malloc_create -b Malloc0 256 512 &&
        spdk_setup_step "bdev_malloc_create Malloc1" bdev_malloc_create -b Malloc1 64 512 &&
        spdk_setup_step "bdev_malloc_create Malloc2" bdev_malloc_create -b Malloc2 256 512 &&
        spdk_setup_step "vhost_create_scsi_controller" vhost_create_scsi_controller --cpumask "$target_mask" vhost.scsi0 &&
        spdk_setup_step "vhost_scsi_controller_add_target 0" vhost_scsi_controller_add_target vhost.scsi0 0 Malloc0 &&
        spdk_setup_step "vhost_scsi_controller_add_target 1" vhost_scsi_controller_add_target vhost.scsi0 1 Malloc1 &&
        spdk_setup_step "vhost_create_blk_controller" vhost_create_blk_controller --cpumask "$target_mask" vhost.blk0 Malloc2 &&
        check_sockets vhost.scsi0 vhost.blk0
}

# check_sockets NAME...: the vhost-user sockets of the controllers exist.
check_sockets() {
    local s missing=''
    for s in "$@"; do
        [[ -S $VHOST_DIR/$s ]] || missing+=" $s"
    done
    [[ -z $missing ]] && return 0
    START_WHY="controllers created but no socket for:$missing"
    return 1
}

# start_kept_vhost PART: the setup row of part A or C; starts and configures SPDK's vhost and
# keeps it running for the part's rows.
start_kept_vhost() {
    local configure=configure_${1,,} ok=true
    vhost_name=$1-spdk-vhost vhost_restarts=0 vhost_keep=''
    start_spdk_vhost "$vhost_name" && "$configure" || ok=false
    if $ok; then
        rpc "$VHOST_RPC" spdk_get_version
        spdk_version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$tmp/stdout" 2>/dev/null || echo unknown)
        vhost_keep=$configure
        return 0
    fi
    stop_pid "$VHOST_PID"
    VHOST_PID=0
    return 1
}

stop_kept_vhost() {
    vhost_keep=''
    ((VHOST_PID != 0)) && stop_pid "$VHOST_PID"
    VHOST_PID=0
    tlog=/dev/null
}

part_a() {
    local d="vbdev -> SPDK vhost" scsi blk512 blk4096
    echo "==> part A: vbdev -> SPDK's vhost target"
    begin_row "$d" "SPDK vhost" "setup: vhost, 4 malloc bdevs, 3 ctrlrs"
    if ! start_kept_vhost A; then
        end_row FAIL "$START_WHY"
        return
    fi
    end_row PASS "$spdk_version; scsi0 t0=Malloc0 (512 B) t1=Malloc1 (4096 B), blk512, blk4096"
    scsi=$VHOST_DIR/vhost.scsi0 blk512=$VHOST_DIR/vhost.blk512 blk4096=$VHOST_DIR/vhost.blk4096

    # Attach with vbdev's default reply deadline, timed.
    local dev sock label
    for dev in scsi blk; do
        if [[ $dev == scsi ]]; then sock=$scsi label="vhost-scsi"; else sock=$blk512 label="vhost-blk (512 B)"; fi
        begin_row "$d" "$label" "attach, default timeout: io info"
        run 60 "${vb[@]}" io --vhost-user "$sock" --dev-type "$dev" info
        local ok=$RC ms=$MS
        if ((RC != 0)); then end_row FAIL "$(why 60)"; else end_row PASS "attached and listed in $ms ms"; fi
        begin_row "$d" "$label" "attach time < $ATTACH_MAX_MS ms"
        if ((ok != 0)); then
            end_row FAIL "the attach failed after $ms ms (row above)"
        elif ((ms >= ATTACH_MAX_MS)); then
            end_row FAIL "io info took $ms ms"
        else
            end_row PASS "io info took $ms ms"
        fi
        # The same with DMA memory on 4 KiB pages: SPDK v24.01 registers each region rounded
        # out to 2 MiB and touches the first byte of every 2 MiB page, which crashes it when the
        # kernel mapped the region off a 2 MiB boundary with nothing below. vbdev must either
        # attach or refuse with advice (reserve huge pages); SPDK's crash is expected here.
        begin_row "$d" "$label" "attach --no-hugetlb: io info"
        local o nh=(taskset -c "$INITIATOR_CPU" "$VBDEV")
        for o in "${vbdev_opts[@]}"; do [[ $o == --hugetlb || $o == --no-hugetlb ]] || nh+=("$o"); done
        vhost_death_ok=true
        run 60 "${nh[@]}" --no-hugetlb io --vhost-user "$sock" --dev-type "$dev" info
        if ((RC == 0)); then
            end_row PASS "attached on 4 KiB pages in $MS ms"
        elif grep -q "huge-page memory" "$tmp/stderr"; then
            end_row PASS "refused with advice: $(grep -m1 -o "hung up.*" "$tmp/stderr" | cut -c1-220)"
        else
            end_row FAIL "$(why 60)"
        fi
    done

    a_bdev_rows scsi "$scsi" "" "vhost-scsi t0 (512 B)" 512
    a_bdev_rows scsi "$scsi" VirtioScsi0t1 "vhost-scsi t1 (4096 B)" 4096
    a_bdev_rows blk "$blk512" "" "vhost-blk (512 B)" 512
    a_bdev_rows blk "$blk4096" "" "vhost-blk (4096 B)" 4096

    a_perf_row scsi "$scsi" "vhost-scsi (t0+t1)" verify
    a_perf_row scsi "$scsi" "vhost-scsi (t0+t1)" reset
    a_perf_row blk "$blk512" "vhost-blk (512 B)" verify
    a_perf_row blk "$blk512" "vhost-blk (512 B)" reset
    a_perf_row blk "$blk4096" "vhost-blk (4096 B)" verify

    # vbdev serve, driven by SPDK's rpc.py.
    slog=$logdir/A-vbdev-serve.log
    : >"$slog"
    mkdir -p "$tmp/serve-vhost"
    start_bg "$slog" "${vb[@]}" serve -r "$tmp/serve.rpc" -S "$tmp/serve-vhost"
    SERVE_PID=$BG_PID
    wait_socket "$tmp/serve.rpc" "$SERVE_PID" 30 || echo "vbdev serve did not create its socket within 30 s" >>"$slog"
    a_serve_rows scsi "$scsi" "vhost-scsi" VirtioScsi0 "VirtioScsi0t0:512 VirtioScsi0t1:4096"
    a_serve_rows blk "$blk512" "vhost-blk (512 B)" VirtioBlk0 "VirtioBlk0:512"
    stop_pid "$SERVE_PID"
    stop_kept_vhost
}

# ---------------------------------------------------------------- part B

part_b() {
    local d="bdevperf -> vbdev target" dev w sock label extra
    echo "==> part B: SPDK's bdevperf -> vbdev's target"
    for dev in blk scsi; do
        extra=()
        label="vbdev target blk"
        if [[ $dev == scsi ]]; then extra=(--targets 2) label="vbdev target scsi (2 tgts)"; fi
        tlog=$logdir/B-vbdev-target-$dev.log
        : >"$tlog"
        for w in verify reset unmap write_zeroes; do
            sock=$tmp/B-$dev-$w.sock
            start_bg "$tlog" taskset -c "$TARGET_CPU" "$VBDEV" target --socket "$sock" --dev-type "$dev" \
                --malloc 256M --queues 2 "${extra[@]}"
            local tpid=$BG_PID
            if ! wait_socket "$sock" "$tpid" 30; then
                one_row "$d" "$label" "bdevperf -w $w" FAIL "vbdev target did not create its socket within 30 s: $(tail -n1 "$tlog")"
            else
                bdevperf_row "$d" "$label" "$dev" "$sock" "$w"
            fi
            stop_pid "$tpid"
        done
    done
    tlog=/dev/null
}

# ---------------------------------------------------------------- part C

part_c() {
    local d="bdevperf -> SPDK vhost" dev w
    echo "==> part C: SPDK's bdevperf -> SPDK's vhost target (harness check)"
    begin_row "$d" "SPDK vhost" "setup: vhost, 3 malloc bdevs, 2 ctrlrs"
    if ! start_kept_vhost C; then
        end_row FAIL "$START_WHY"
        return
    fi
    end_row PASS "scsi0 t0=Malloc0 t1=Malloc1, blk0=Malloc2 (512 B blocks)"
    for dev in blk scsi; do
        for w in verify reset unmap write_zeroes; do
            bdevperf_row "$d" "SPDK vhost-$dev" "$dev" "$VHOST_DIR/vhost.${dev}0" "$w"
        done
    done
    stop_kept_vhost
}

# ---------------------------------------------------------------- main

start=$SECONDS
spdk_version=unknown
setup_hugepages
{
    echo "# scripts/spdk-interop.sh, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# vbdev: $VBDEV ($("$VBDEV" --version 2>/dev/null))"
    # "-dirty" counts changes outside bench/runs (where this very output may go).
    dirty=$(git -C "$root" status --porcelain -- . ':(exclude)bench/runs' 2>/dev/null | head -n1)
    echo "# vbdev commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty:+-dirty} ($(git -C "$root" log -1 --format=%s 2>/dev/null | cut -c1-100))"
    echo "# SPDK: $(basename "$SPDK_DIR") tree, DPDK $(pkg-config --modversion libdpdk 2>/dev/null || echo '?')"
    echo "# machine: $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# settings: PARTS='$PARTS' VBDEV_OPTS='${VBDEV_OPTS:-}' SECS=$SECS RESET_SECS=$RESET_SECS VBDEV_TIMEOUT_MS=$VBDEV_TIMEOUT_MS ATTACH_MAX_MS=$ATTACH_MAX_MS TARGET_CPU=$TARGET_CPU INITIATOR_CPU=$INITIATOR_CPU"
    echo "# hugepages: nr_hugepages ${huge_nr_old:-$(cat /proc/sys/vm/nr_hugepages)} -> $(cat /proc/sys/vm/nr_hugepages) (restored at exit), $(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo) free at start, private hugetlbfs mount"
} >"$OUT/summary"
cat "$OUT/summary"
# shellcheck disable=SC2059
printf "$fmt" "#" "direction" "target" "check" "res." "reason" | tee "$OUT/table.txt"

for p in $PARTS; do
    lock_ex
    part_start=$SECONDS
    case $p in
        A) part_a ;;
        B) part_b ;;
        C) part_c ;;
    esac
    unlock
    echo "==> part $p took $((SECONDS - part_start)) s" | tee -a "$OUT/table.txt"
done

{
    echo
    echo "$nrow rows: $npass PASS, $nfail FAIL, $nna N/A ($((SECONDS - start - lock_waited)) s, not counting $lock_waited s of waiting for LOCK)."
    echo "Per-row logs (commands, both sides' output): logs/ next to this table"
} | tee -a "$OUT/table.txt"
echo "Output: $OUT"
[[ -n $spdk_version && $spdk_version != unknown ]] && sed -i "s|^# SPDK: .*|&, $spdk_version|" "$OUT/summary"
((nfail == 0))
