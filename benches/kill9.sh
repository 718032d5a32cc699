#!/usr/bin/env bash
# kill -9 at random points of a copy, then resume, RUNS times: every target must have the
# source's digest (`ferry verify`), and the script reports how much the resumed copies
# read again. A long campaign (RUNS=1000) runs outside CI; scripts/test.sh runs a smoke of
# a few runs.
#
#   benches/kill9.sh [RUNS] [SIZE_MIB]        (FERRY=path/to/ferry, default target/release)
#
# Each run: a sparse-random disk (a new seed per run, ~50% data in runs of 1 MiB, made by
# nbdkit, served by qemu-nbd); `ferry copy SRC T --journal J` is killed with SIGKILL after a random 0–80 % of
# the time a full copy took; the same command is run again until it exits 0 (each
# attempt may be killed again, at most 3 kills a run); then `ferry verify SRC T`.
# Re-read fraction = bytes the finishing attempt read / bytes the disk holds: 1.0 is no
# gain from the journal, small is good; it cannot be below the part not yet durable.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
size_mib=${2:-1024}
ferry=${FERRY:-target/release/ferry}
[ -x "$ferry" ] || { echo "kill9: $ferry is not built (cargo build --release -p ferry, or FERRY=...)" >&2; exit 2; }
for t in nbdkit nbdcopy qemu-nbd; do command -v $t >/dev/null || { echo "kill9: $t is missing (scripts/setup.sh)" >&2; exit 2; }; done
work=$(mktemp -d)
trap 'kill $(cat "$work"/nbd.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT

ms_now() { date +%s%3N; }
json_num() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

identical=0 crashes=0 kills=0
fractions=()
for run in $(seq 1 "$runs"); do
  rm -f "$work"/nbd.sock "$work"/t.img "$work"/j "$work"/src.img
  # The disk, made by nbdkit and served by qemu-nbd: nbdkit 1.32 aborts (an assertion
  # in raw_send_socket) when a client is killed mid-reply, qemu-nbd does not.
  nbdkit -U "$work/gen.sock" -P "$work/gen.pid" sparse-random "size=${size_mib}M" \
    percent=50 runlength=1048576 "seed=$run"
  for _ in $(seq 100); do [ -s "$work/gen.pid" ] && [ -S "$work/gen.sock" ] && break; sleep 0.02; done
  nbdcopy "nbd+unix:///?socket=$work/gen.sock" "$work/src.img"
  kill "$(cat "$work/gen.pid")"; rm -f "$work/gen.pid" "$work/gen.sock"
  qemu-nbd -t --shared=16 -r -f raw -k "$work/nbd.sock" --pid-file "$work/nbd.pid" "$work/src.img" 2>/dev/null &
  for _ in $(seq 100); do [ -s "$work/nbd.pid" ] && [ -S "$work/nbd.sock" ] && break; sleep 0.02; done
  src="nbd+unix:///?socket=$work/nbd.sock"
  # How long a whole copy takes, for the kill points.
  t0=$(ms_now)
  out=$("$ferry" copy "$src" "$work/full.img" --json --no-progress 2>/dev/null)
  full_ms=$(( $(ms_now) - t0 + 1 ))
  [ -n "${KILL9_DEBUG:-}" ] && echo "run $run: a whole copy took ${full_ms} ms" >&2
  data=$(json_num "$out" bytes_read)
  rm -f "$work/full.img"
  attempts=0 last="" killed=0
  while :; do
    attempts=$((attempts + 1))
    "$ferry" copy "$src" "$work/t.img" --journal "$work/j" --json --no-progress \
      >"$work/out" 2>"$work/err" &
    pid=$!
    if [ "$attempts" -le 3 ]; then
      at=$(( (RANDOM * 32768 + RANDOM) % (full_ms * 8 / 10 + 1) ))
      sleep "$((at / 1000)).$(printf %03d $((at % 1000)))"
      if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); killed=1; fi
    fi
    status=0; wait "$pid" 2>/dev/null || status=$?
    if [ "$status" -eq 0 ]; then last=$(cat "$work/out"); break; fi
    if [ "$status" -ne 137 ]; then
      crashes=$((crashes + 1))
      echo "run $run attempt $attempts: exit $status" >&2; sed 's/^/  /' "$work/err" >&2
      break
    fi
  done
  if [ -n "$last" ]; then
    read_again=$(json_num "$last" bytes_read)
    # Only runs that were killed at least once say anything about resuming.
    [ "$killed" = 1 ] && fractions+=("$(python3 -c "print($read_again / max($data, 1))")")
    if "$ferry" verify "$src" "$work/t.img" >/dev/null 2>"$work/verr"; then
      identical=$((identical + 1))
    else
      echo "run $run: target differs" >&2; tail -1 "$work/verr" >&2
    fi
  fi
  kill "$(cat "$work/nbd.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "$work/nbd.pid"
done
python3 - "$runs" "$identical" "$crashes" "$kills" "${fractions[@]}" <<'EOF'
import statistics, sys
runs, identical, crashes, kills = map(int, sys.argv[1:5])
f = [float(x) for x in sys.argv[5:]]
mean = statistics.mean(f) if f else float("nan")
print(f"kill9: runs {runs}, kills {kills} (in {len(f)} runs), identical {identical}, crashes {crashes}, "
      f"re-read fraction after a kill: mean {mean:.3f}, max {max(f) if f else float('nan'):.3f}")
EOF
[ "$kills" -gt 0 ] || echo "kill9: no copy was killed (they all ended first): give a larger SIZE_MIB" >&2
[ "$identical" -eq "$runs" ] && [ "$crashes" -eq 0 ]
