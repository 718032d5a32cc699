#!/usr/bin/env bash
# Compressed raw disks, side by side: `ferry copy DISK.raw.EXT DST` against the
# compressor's own decoder writing the same file (`TOOL -dc | dd conv=sparse`, what a
# script would do; CDI's path is the same shape, a Go decoder and a write loop) and the
# decoder floor (`TOOL -dc > /dev/null`). Each run starts with the target deleted, `sync`
# and, as root, the page cache dropped; the median of RUNS is printed with ratios.
#   benches/stream.sh [SIZE_MIB] [RUNS]
# The disk: SIZE_MIB (default 2048) with a quarter holding compressible data (the
# workspace's own build artefacts and sources, as a filesystem's files would), the rest
# zeroes, as a cloud image is.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-2048}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-stream.XXXXXX); trap 'rm -rf "$work"' EXIT
raw=$work/disk.raw
truncate -s "${size_mib}M" "$raw"
data_mib=$((size_mib / 4))
# Data: real files (compressible like a filesystem's), in 4 runs across the disk.
# (head closes the pipe early: the writers' SIGPIPE is expected.)
{ find /usr/lib /usr/share -type f -size +64k 2>/dev/null | head -4000 | xargs cat 2>/dev/null |
  head -c "$((data_mib << 20))" > "$work/data"; } || true
chunk=$((data_mib / 4))
for i in 0 1 2 3; do
  dd if="$work/data" of="$raw" bs=1M skip=$((i * chunk)) seek=$((i * size_mib / 4)) count=$chunk conv=notrunc status=none
done
rm "$work/data"
gzip -c -6 "$raw" > "$raw.gz"
xz -c -3 -T2 "$raw" > "$raw.xz"
zstd -q -c -3 -T2 "$raw" > "$raw.zst"
ls -l "$raw"*

drop() { sync; if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
time_of() { # the seconds a command takes, after a clean start
  rm -f "$work/t.img"; drop
  local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

printf '%-5s %-28s %9s %9s\n' codec tool seconds ratio
for ext in gz xz zst; do
  case $ext in gz) dec="gzip -dc";; xz) dec="xz -dc -T2";; zst) dec="zstd -dc";; esac
  declare -A t=()
  for tool in ferry dd floor; do t[$tool]=""; done
  for _ in $(seq "$runs"); do
    t[ferry]+=" $(time_of "$ferry" copy "$raw.$ext" "$work/t.img" --no-progress)"
    cmp "$raw" "$work/t.img"
    t[dd]+=" $(time_of sh -c "$dec '$raw.$ext' | dd of='$work/t.img' bs=1M conv=sparse status=none && sync '$work/t.img'")"
    t[floor]+=" $(time_of sh -c "$dec '$raw.$ext' > /dev/null")"
  done
  f=$(median ${t[floor]})
  for tool in ferry dd floor; do
    m=$(median ${t[$tool]})
    label=$tool; [ "$tool" = dd ] && label="$dec | dd conv=sparse"; [ "$tool" = floor ] && label="$dec > /dev/null"
    printf '%-5s %-28s %9s %9s\n' "$ext" "$label" "$m" "$(python3 -c "print(f'{$m / $f:.2f}')")"
  done
  unset t
done
