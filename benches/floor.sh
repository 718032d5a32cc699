#!/usr/bin/env bash
# What a copy cannot go below on this machine, beside Ferry and nbdcopy, in one run:
# CPU seconds per GiB and wall time of
#   - the cheapest NBD reader (benches/nbd_floor.py: READs into one buffer, nothing
#     else): the read side's floor, mostly the kernel's socket receive;
#   - fio writing a new file with O_DIRECT (1 MiB, 32 in flight, io_uring): the write
#     side's floor;
#   - Ferry and nbdcopy into `null:` (read side only) and into a new file.
# Rounds alternate the tools; the table gives medians.
#
#   benches/floor.sh [SIZE=4G] [RUNS=3]
#
# The source: nbdkit's `pattern` plugin on a Unix socket (benches/lib.sh). Needs fio.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-4G}; runs=${2:-3}
. benches/lib.sh
pattern_source "$size"
command -v fio >/dev/null || { echo "floor.sh: fio is not installed" >&2; exit 1; }
bytes=$(nbdinfo --size "$src")
sock=$work/sock
declare -A wall cpu
names=("floor: NBD reader" "floor: fio new-file write" "ferry null:" "nbdcopy null:" "ferry file" "nbdcopy file")
for r in $(seq "$runs"); do
  for name in "${names[@]}"; do
    case $name in
      "floor: NBD reader") cmd=(python3 benches/nbd_floor.py "$sock") ;;
      "floor: fio new-file write") cmd=(fio --name=w "--filename=$work/t.img" --rw=write --bs=1M "--size=$bytes" \
          --direct=1 --ioengine=io_uring --iodepth=32 --fallocate=none --end_fsync=1) ;;
      "ferry null:") cmd=("$ferry" copy "$src" null:) ;;
      "nbdcopy null:") cmd=(nbdcopy "$src" null:) ;;
      "ferry file") cmd=("$ferry" copy "$src" "$work/t.img") ;;
      "nbdcopy file") cmd=(nbdcopy --flush "$src" "$work/t.img") ;;
    esac
    read -r w c < <(cpu_of "${cmd[@]}")
    wall[$name]+="$w "; cpu[$name]+="$c "
    echo "run $r  $(printf '%-26s' "$name") ${w} s  ${c} CPU-s"
  done
done
echo
echo "median of $runs, $size of nbdkit pattern:"
printf '%-26s %8s %12s\n' "" "wall" "CPU-s/GiB"
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  w=$(median ${wall[$name]}); c=$(median ${cpu[$name]})
  printf '%-26s %7ss %12s\n' "$name" "$w" "$(python3 -c "print(f'{$c / ($bytes / 2**30):.3f}')")"
done
