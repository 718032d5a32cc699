#!/usr/bin/env bash
# What a copy cannot go below on this machine, beside Ferry and nbdcopy, in one run:
# CPU seconds per GiB and wall time of
#   - the cheapest NBD reader (benches/nbd_floor.py: READs into one buffer, nothing
#     else): the read side's floor, mostly the kernel's socket receive;
#   - fio writing a new sparse file of the disk's size with O_DIRECT (1 MiB, 32 in
#     flight, io_uring): the write side's floor;
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
      # A new file as a copy makes it: sparse at the disk's size first (ftruncate, as
      # `ferry copy` and nbdcopy do), then written inside that size. Writes past the end
      # of an O_DIRECT file are another, slower path in ext4 (3.3 s against 1.8-2.0 s for
      # 4 GiB here, 1.6 s of system time), which no copier takes.
      "floor: fio new-file write") cmd=(sh -c 'truncate -s "$1" "$2" && exec fio --name=w "--filename=$2" --rw=write \
          --bs=1M "--size=$1" --direct=1 --ioengine=io_uring --iodepth=32 --fallocate=none --end_fsync=1' \
          sh "$bytes" "$work/t.img") ;;
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
