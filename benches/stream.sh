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
. benches/lib.sh
size_mib=${1:-2048}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-stream.XXXXXX); trap 'rm -rf "$work"' EXIT
raw=$work/disk.raw
make_disk "$raw" "$size_mib" $((size_mib / 4))
gzip -c -6 "$raw" > "$raw.gz"
xz -c -3 -T2 "$raw" > "$raw.xz"
zstd -q -c -3 -T2 "$raw" > "$raw.zst"
ls -l "$raw"*


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
