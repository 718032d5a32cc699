#!/usr/bin/env bash
# Power cuts under a copy, RUNS times: the target is a block device whose writes sit in a
# volatile cache until flushed, and the cache is thrown away at a random point of the
# copy; the copy is then resumed from its journal. Every journal's watermark must hold on
# the target after the cut (what it calls copied is there), every copy that exits 0 must
# be on the target after a cut right after it (what it calls done is durable), and every
# finished target must equal the source (cmp). A long campaign (RUNS=100) runs outside
# CI; scripts/test.sh runs a smoke of a few runs.
#
#   benches/powercut.sh [RUNS] [SIZE_MIB]     (FERRY=path/to/ferry, default target/release)
#
# The target: a sparse file served by nbdkit's file plugin under its cache filter with
# cache=writeback (writes stay in nbdkit's cache until the client flushes), exposed as a
# file by nbdfuse and as a block device by a direct-I/O loop device on that file. Ferry
# writes /dev/loopN; its fdatasync reaches nbdkit as NBD_CMD_FLUSH. The cut: nbdkit is
# killed with SIGKILL, so every write not yet flushed is lost, as a disk's volatile cache
# is at a power failure; the loop device and the FUSE mount are torn down and rebuilt on
# the same file ("power restored"), and `ferry copy SRC /dev/loopN --journal J` runs again
# (it may be cut again: at most 2 cuts a run). Then a delta round onto that target (a
# quarter of the disk's 1 MiB runs rewritten, `--changed-extents`) is cut and resumed the
# same way (POWERCUT_DELTA=0 skips it).
#
# The source (a sparse-random disk, a new seed per run, ~50 % data in 1 MiB runs) is made
# by nbdkit and served by qemu-nbd, as in kill9.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
size_mib=${2:-256}
ferry=${FERRY:-target/release/ferry}
# An attempt that has not ended after this long is a hang.
attempt_limit=${POWERCUT_ATTEMPT_SECS:-300}
[ -x "$ferry" ] || { echo "powercut: $ferry is not built (cargo build --release -p ferry, or FERRY=...)" >&2; exit 2; }
for t in nbdkit nbdcopy qemu-nbd nbdfuse losetup cmp; do
  command -v $t >/dev/null || { echo "powercut: $t is missing (scripts/setup.sh)" >&2; exit 2; }
done
[ -e /dev/fuse ] || { echo "powercut: /dev/fuse is missing (nbdfuse needs FUSE)" >&2; exit 2; }
work=$(mktemp -d)
here=$(pwd)
. benches/faults.sh
helper() { python3 "$here/benches/kill9_helper.py" "$@"; }
dev="" fuse_pid=""

power_on() { # the target device over $work/back.img; sets dev and fuse_pid
  mkdir -p "$work/mnt"
  nbdfuse "$work/mnt/disk" --command nbdkit -s --filter=cache file "$work/back.img" \
    cache=writeback 2>>"$work/fuse.log" &
  fuse_pid=$!
  # nbdfuse 1.14 may abort when its nbdkit is killed: not the shell's news.
  disown "$fuse_pid"
  for _ in $(seq 250); do [ -e "$work/mnt/disk" ] && break; sleep 0.02; done
  [ -e "$work/mnt/disk" ] || { echo "powercut: nbdfuse did not start:" >&2; tail -5 "$work/fuse.log" >&2; exit 2; }
  dev=$(losetup -f --show --direct-io=on "$work/mnt/disk")
}
power_cut() { # what nbdkit holds unflushed is lost
  pkill -9 -P "$fuse_pid" -x nbdkit 2>/dev/null || true
}
power_off() { # after a cut (or at the end): loop, mount and nbdfuse gone
  [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null || true
  dev=""
  umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
  if [ -n "$fuse_pid" ]; then
    power_cut
    for _ in $(seq 250); do kill -0 "$fuse_pid" 2>/dev/null || break; sleep 0.02; done
    kill -9 "$fuse_pid" 2>/dev/null || true
  fi
  fuse_pid=""
}
cleanup() {
  power_off
  kill "$(cat "$work"/nbd.pid 2>/dev/null)" 2>/dev/null || true
  kill "$(cat "$work"/gen.pid 2>/dev/null)" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# cut_resume SRC_URI SRC_FILE JOURNAL FULL_MS EXTRA...: with the power on, run the copy
# onto $dev, cut the power at a random point (at most 2 times), check the journal's
# watermark against the target, power on again and run it again until it exits 0; then
# cut right after it and check the whole target. Sets c (cuts during a copy), last (the
# finishing attempt's JSON), bad (0/1: a promise broken), crashed (0/1), hung (0/1).
cut_resume() {
  local uri=$1 srcfile=$2 jrn=$3 full=$4
  shift 4
  local attempts=0 pid status at w waited d
  c=0 last="" bad=0 crashed=0 hung=0
  while :; do
    attempts=$((attempts + 1))
    power_on
    "$ferry" copy "$uri" "$dev" --journal "$jrn" --json --no-progress "$@" \
      >"$work/out" 2>"$work/err" &
    pid=$!
    if [ "$attempts" -le 2 ]; then
      at=$(( (RANDOM * 32768 + RANDOM) % (full * 9 / 10 + 1) ))
      sleep "$((at / 1000)).$(printf %03d $((at % 1000)))"
      kill -0 "$pid" 2>/dev/null && c=$((c + 1))
      power_cut
    fi
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((attempt_limit * 10)) ]; do
      sleep 0.1; waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      hung=1; kill -9 "$pid" 2>/dev/null || true
      echo "run $run attempt $attempts: still running ${attempt_limit}s after the cut" >&2
    fi
    status=0; wait "$pid" 2>/dev/null || status=$?
    # The cut (again, for an attempt that was not cut): nothing unflushed survives it.
    power_cut
    power_off
    if [ "$status" -eq 0 ]; then
      last=$(cat "$work/out")
      if ! cmp -s "$srcfile" "$work/back.img"; then
        bad=1
        echo "run $run attempt $attempts: exited 0, but after a power cut the target differs:" >&2
        cmp "$srcfile" "$work/back.img" 2>&1 | head -1 | sed 's/^/  /' >&2 || true
      fi
      return 0
    fi
    [ "$hung" = 1 ] && return 0
    # A cut attempt fails with a target I/O error; a panic or another signal is a crash.
    if [ "$status" -gt 128 ] || [ "$status" -eq 101 ]; then
      crashed=1
      echo "run $run attempt $attempts: exit $status" >&2; sed 's/^/  /' "$work/err" >&2
      return 0
    fi
    w=$(watermark "$jrn"); w=${w:-0}
    d=$(helper differ "$srcfile" "$work/back.img" "$w")
    if [ "$d" != "none" ]; then
      bad=1
      echo "run $run attempt $attempts: the journal says $w bytes are copied, but the target differs at $d after the cut" >&2
      return 0
    fi
    [ -n "${POWERCUT_DEBUG:-}" ] && echo "run $run attempt $attempts: exit $status after the cut, watermark $w: $(tail -1 "$work/err")" >&2
  done
}

identical=0 crashes=0 hangs=0 broken=0 cuts=0 dcuts=0
fractions="" dfractions=""
full_ms="" delta_ms=""
for run in $(seq 1 "$runs"); do
  rm -f "$work"/back.img "$work"/j "$work"/j2 "$work"/src.img "$work"/src2.img
  random_disk "$work/src.img" "$size_mib" "$run"
  serve "$work/src.img"
  src="nbd+unix:///?socket=$work/nbd.sock"
  truncate -s "$(stat -c %s "$work/src.img")" "$work/back.img"
  if [ -z "$full_ms" ]; then
    # How long a whole copy onto the device takes, for the cut points (the first disk).
    power_on
    t0=$(ms_now)
    "$ferry" copy "$src" "$dev" --no-progress >/dev/null 2>&1
    full_ms=$(( $(ms_now) - t0 + 1 ))
    power_off
    rm -f "$work/back.img"; truncate -s "$(stat -c %s "$work/src.img")" "$work/back.img"
    [ -n "${POWERCUT_DEBUG:-}" ] && echo "a whole copy onto the device took ${full_ms} ms" >&2
  fi
  data=$("$ferry" copy "$src" null: --json --no-progress 2>/dev/null)
  data=$(json_num "$data" bytes_read)
  cut_resume "$src" "$work/src.img" "$work/j" "$full_ms"
  cuts=$((cuts + c)); crashes=$((crashes + crashed)); hangs=$((hangs + hung)); broken=$((broken + bad))
  ok=0
  if [ -n "$last" ] && [ "$bad" = 0 ]; then
    ok=1
    [ "$c" -gt 0 ] && fractions="$fractions $(ratio "$(json_num "$last" bytes_read)" "$data")"
  fi
  unserve
  if [ "$ok" = 1 ] && [ "${POWERCUT_DELTA:-1}" = 1 ]; then
    cp --sparse=always "$work/src.img" "$work/src2.img"
    changed=$(helper change "$work/src2.img" "$work/changed.json" "$run")
    serve "$work/src2.img"
    if [ -z "$delta_ms" ]; then
      cp --sparse=always "$work/back.img" "$work/keep.img"
      power_on
      t0=$(ms_now)
      "$ferry" copy "$src" "$dev" --changed-extents "$work/changed.json" --no-progress >/dev/null 2>&1
      delta_ms=$(( $(ms_now) - t0 + 1 ))
      power_off
      mv "$work/keep.img" "$work/back.img"
    fi
    cut_resume "$src" "$work/src2.img" "$work/j2" "$delta_ms" --changed-extents "$work/changed.json"
    dcuts=$((dcuts + c)); crashes=$((crashes + crashed)); hangs=$((hangs + hung)); broken=$((broken + bad))
    if [ -z "$last" ] || [ "$bad" = 1 ]; then
      ok=0
    elif [ "$c" -gt 0 ]; then
      dfractions="$dfractions $(ratio "$(json_num "$last" bytes_read)" "$changed")"
    fi
    unserve
  fi
  if [ "$ok" = 1 ]; then identical=$((identical + 1)); fi
done
helper powercut-report "$runs" "$identical" "$crashes" "$hangs" "$broken" "$cuts" "$dcuts" \
  "$fractions" "$dfractions"
[ "$cuts" -gt 0 ] || echo "powercut: no copy was cut (they all ended first): give a larger SIZE_MIB" >&2
[ "$identical" -eq "$runs" ] && [ "$crashes" -eq 0 ] && [ "$hangs" -eq 0 ] && [ "$broken" -eq 0 ]
