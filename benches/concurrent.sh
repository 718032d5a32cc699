#!/usr/bin/env bash
# N copies on one node at once, as Forklift runs N importer pods: `ferry bench
# --concurrent N` runs Ferry (and nbdcopy) alone, then N at once, each copy in its own
# child cgroup under the limit and into its own new file, and reports the aggregate
# throughput of the N against one copy's alone (1.0: the node's capacity is shared
# without loss).
#
#   benches/concurrent.sh [N=8] [LIMIT=750m|none] [SIZE=2G] [RUNS=3]
#
# The source: one nbdkit `pattern` server on a Unix socket serving every copy (one
# connection each), outside the cgroups. On a small machine the source's CPU and the
# disk are shared with the copies: the ratio then measures how well the copies share
# them, which is what a busy node asks. Needs root (cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8}; limit=${2:-750m}; size=${3:-2G}; runs=${4:-3}
. benches/lib.sh
pattern_source "$size"
extra=()
[ "$limit" = none ] || extra=(--cpu-limit "$limit")
"$ferry" bench "$src" "$work/t.img" --compare nbdcopy \
    --concurrent "$n" --runs "$runs" "${extra[@]}"
