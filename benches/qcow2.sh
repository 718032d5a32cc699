#!/usr/bin/env bash
# qcow2 images from a local file, side by side: `ferry copy DISK.qcow2 DST` against
# `qemu-img convert -O raw` (its defaults, and with -m 16 -W: 16 requests, out-of-order
# writes) into the same new file. Each run starts with the target deleted, `sync` and,
# as root, the page cache dropped; medians of RUNS, every Ferry copy checked with cmp
# against qemu-img's.
#   benches/qcow2.sh [SIZE_MIB] [RUNS]
# The disk: SIZE_MIB (default 2048), half of it real files' bytes (compressible, as a
# filesystem's), the rest zeroes; as qcow2 plain and zstd-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
size_mib=${1:-2048}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-qcow2.XXXXXX); trap 'rm -rf "$work"' EXIT
raw=$work/disk.raw
make_disk "$raw" "$size_mib" $((size_mib / 2))
qemu-img convert -O qcow2 "$raw" "$work/plain.qcow2"
qemu-img convert -c -O qcow2 -o compression_type=zstd "$raw" "$work/zstd.qcow2"
qemu-img convert -O raw "$work/plain.qcow2" "$work/ref.raw"
rm "$raw"
ls -l "$work"

printf '%-6s %-34s %9s %9s\n' image tool seconds "ferry/x"
for img in plain zstd; do
  f=""; q=""; w=""
  for _ in $(seq "$runs"); do
    f+=" $(time_of "$ferry" copy "$work/$img.qcow2" "$work/t.img" --no-progress)"
    cmp "$work/ref.raw" "$work/t.img"
    q+=" $(time_of sh -c "qemu-img convert -O raw '$work/$img.qcow2' '$work/t.img' && sync '$work/t.img'")"
    w+=" $(time_of sh -c "qemu-img convert -m 16 -W -O raw '$work/$img.qcow2' '$work/t.img' && sync '$work/t.img'")"
  done
  mf=$(median $f); mq=$(median $q); mw=$(median $w)
  printf '%-6s %-34s %9s %9s\n' "$img" "ferry copy" "$mf" "1.00"
  printf '%-6s %-34s %9s %9s\n' "$img" "qemu-img convert -O raw" "$mq" "$(python3 -c "print(f'{$mf / $mq:.2f}')")"
  printf '%-6s %-34s %9s %9s\n' "$img" "qemu-img convert -m 16 -W -O raw" "$mw" "$(python3 -c "print(f'{$mf / $mw:.2f}')")"
done
