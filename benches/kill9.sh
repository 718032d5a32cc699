#!/usr/bin/env bash
# kill -9 at random points of a copy, then resume, RUNS times: every target must have the
# source's digest (`ferry verify`), and the script reports how much the resumed copies
# read again. A long campaign (RUNS=1000) runs outside CI; scripts/test.sh runs a smoke of
# a few runs.
#
#   benches/kill9.sh [RUNS] [SIZE_MIB]        (FERRY=path/to/ferry, default target/release)
#
# Each run: a sparse-random disk (a new seed per run, ~50% data in runs of 1 MiB, made by
# nbdkit, served by qemu-nbd); `ferry copy SRC T --journal J` is killed with SIGKILL after
# a random 0–80 % of the time a full copy took; the same command is run again until it
# exits 0 (each attempt may be killed again, at most 3 kills a run); then
# `ferry verify SRC T`. Then a delta round onto that target: a quarter of the disk's
# 1 MiB runs rewritten (`--changed-extents`), killed and resumed the same way, and the
# target verified against the new disk (KILL9_DELTA=0 skips it).
#
# Re-read fraction: the data a killed attempt had written past the watermark its journal
# recorded (found with SEEK_DATA on the target right after the kill, before the next
# attempt), which the next attempt copies again, over the data the round copies. The
# finishing attempt's read fraction (what it read / the data; 1.0 would be no gain from
# the journal) is reported beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
size_mib=${2:-1024}
ferry=${FERRY:-target/release/ferry}
[ -x "$ferry" ] || { echo "kill9: $ferry is not built (cargo build --release -p ferry, or FERRY=...)" >&2; exit 2; }
for t in nbdkit nbdcopy qemu-nbd; do command -v $t >/dev/null || { echo "kill9: $t is missing (scripts/setup.sh)" >&2; exit 2; }; done
work=$(mktemp -d)
trap 'kill $(cat "$work"/nbd.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
here=$(pwd)
. benches/faults.sh
# What the next attempt copies again: data written past the recorded watermark (a full
# copy onto a new file), or changed extents past it already holding the new bytes (a delta).
past_full() { python3 "$here/benches/kill9_helper.py" past "$1" "$2"; }
past_delta() { python3 "$here/benches/kill9_helper.py" past-delta "$1" "$work/src2.img" "$work/changed.json" "$2"; }
past_fn=past_full

# kill_resume SRC TARGET JOURNAL FULL_MS EXTRA...: run the copy, kill it at random points
# (at most 3 times), run it again until it exits 0. Sets k (kills), last (the finishing
# attempt's JSON; empty after a crash), past (bytes written past the recorded watermark
# at the kills), crashed (0/1).
kill_resume() {
  local src=$1 tgt=$2 jrn=$3 full=$4
  shift 4
  local attempts=0 pid status at w
  k=0 last="" past=0 crashed=0
  while :; do
    attempts=$((attempts + 1))
    "$ferry" copy "$src" "$tgt" --journal "$jrn" --json --no-progress "$@" \
      >"$work/out" 2>"$work/err" &
    pid=$!
    if [ "$attempts" -le 3 ]; then
      at=$(( (RANDOM * 32768 + RANDOM) % (full * 8 / 10 + 1) ))
      sleep "$((at / 1000)).$(printf %03d $((at % 1000)))"
      if kill -9 "$pid" 2>/dev/null; then k=$((k + 1)); fi
    fi
    status=0; wait "$pid" 2>/dev/null || status=$?
    if [ "$status" -eq 0 ]; then last=$(cat "$work/out"); return 0; fi
    if [ "$status" -ne 137 ]; then
      crashed=1
      echo "run $run attempt $attempts: exit $status" >&2; sed 's/^/  /' "$work/err" >&2
      return 0
    fi
    w=$(watermark "$jrn"); w=${w:-0}
    past=$((past + $($past_fn "$tgt" "$w")))
  done
}

identical=0 crashes=0 kills=0 dkills=0
fractions="" rereads="" drereads=""
for run in $(seq 1 "$runs"); do
  rm -f "$work"/nbd.sock "$work"/t.img "$work"/j "$work"/j2 "$work"/src.img "$work"/src2.img
  random_disk "$work/src.img" "$size_mib" "$run"
  serve "$work/src.img"
  src="nbd+unix:///?socket=$work/nbd.sock"
  # How long a whole copy takes, for the kill points.
  t0=$(ms_now)
  out=$("$ferry" copy "$src" "$work/full.img" --json --no-progress 2>/dev/null)
  full_ms=$(( $(ms_now) - t0 + 1 ))
  [ -n "${KILL9_DEBUG:-}" ] && echo "run $run: a whole copy took ${full_ms} ms" >&2
  data=$(json_num "$out" bytes_read)
  rm -f "$work/full.img"
  kill_resume "$src" "$work/t.img" "$work/j" "$full_ms"
  kills=$((kills + k)); crashes=$((crashes + crashed))
  ok=0
  if [ -n "$last" ]; then
    # Only runs that were killed at least once say anything about resuming.
    if [ "$k" -gt 0 ]; then
      fractions="$fractions $(ratio "$(json_num "$last" bytes_read)" "$data")"
      rereads="$rereads $(ratio "$past" "$data")"
    fi
    if "$ferry" verify "$src" "$work/t.img" >/dev/null 2>"$work/verr"; then
      ok=1
    else
      echo "run $run: target differs" >&2; tail -1 "$work/verr" >&2
    fi
  fi
  unserve
  if [ "$ok" = 1 ] && [ "${KILL9_DELTA:-1}" = 1 ]; then
    # The next round: a quarter of the 1 MiB runs rewritten, listed as changed extents.
    cp --sparse=always "$work/src.img" "$work/src2.img"
    changed=$(python3 "$here/benches/kill9_helper.py" change "$work/src2.img" "$work/changed.json" "$run")
    serve "$work/src2.img"
    cp --sparse=always "$work/t.img" "$work/d.img"
    t0=$(ms_now)
    "$ferry" copy "$src" "$work/d.img" --changed-extents "$work/changed.json" --json --no-progress >/dev/null 2>&1
    delta_ms=$(( $(ms_now) - t0 + 1 ))
    rm -f "$work/d.img"
    past_fn=past_delta
    kill_resume "$src" "$work/t.img" "$work/j2" "$delta_ms" --changed-extents "$work/changed.json"
    past_fn=past_full
    dkills=$((dkills + k)); crashes=$((crashes + crashed))
    if [ "$k" -gt 0 ] && [ -n "$last" ]; then drereads="$drereads $(ratio "$past" "$changed")"; fi
    if [ -z "$last" ] || ! "$ferry" verify "$src" "$work/t.img" >/dev/null 2>"$work/verr"; then
      ok=0; echo "run $run: the delta round's target differs" >&2; tail -1 "$work/verr" >&2
    fi
    unserve
  fi
  if [ "$ok" = 1 ]; then identical=$((identical + 1)); fi
done
python3 "$here/benches/kill9_helper.py" report "$runs" "$identical" "$crashes" "$kills" "$dkills" \
  "$fractions" "$rereads" "$drereads"
[ "$kills" -gt 0 ] || echo "kill9: no copy was killed (they all ended first): give a larger SIZE_MIB" >&2
[ "$identical" -eq "$runs" ] && [ "$crashes" -eq 0 ]
