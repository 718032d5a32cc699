#!/usr/bin/env bash
# Ferry and nbdcopy under a pod's CPU limit, side by side: `ferry bench --cpu-limit`
# runs each tool alone in a child cgroup with the limit (v1 or v2, whichever the machine
# has), alternating, and reports wall time, CPU seconds per GiB and the cgroup's
# throttled periods (`cpu.stat`). Two targets: a new file (`--flush` for nbdcopy) and
# `null:` (the read side only). Then the same without a limit.
#
#   benches/cpu-limit.sh [LIMIT=750m] [SIZE=4G] [RUNS=3]
#
# The source: nbdkit's `pattern` plugin on a Unix socket (every byte data, cheap to
# make), outside the cgroups, as the source is outside the pod. Needs root (cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-750m}; size=${2:-4G}; runs=${3:-3}
. benches/lib.sh
pattern_source "$size"
for l in "$limit" none; do
  for dst in "$work/t.img" null:; do
    echo "== into $dst, CPU limit $l"
    extra=()
    [ "$l" = none ] || extra=(--cpu-limit "$l")
    "$ferry" bench "$src" "$dst" --compare nbdcopy --runs "$runs" "${extra[@]}"
  done
done
