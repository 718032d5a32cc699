#!/usr/bin/env bash
# VDDK read path against the fake libvixDiskLib: Ferry's throughput at several
# --buf-count values (1 MiB buffers) beside the in-flight bound, and beside today's CDI
# shape (nbdcopy, one request in flight, over nbdkit's delay + rate filters).
#   benches/vddk-fake.sh [LATENCY_MS] [BANDWIDTH] [SYNC_COMPLETE_PERCENT]
# Defaults: 4 ms, 1G (bytes/s, binary units), the fake's default 10 % of reads
# completed inside ReadAsync (which blocks the one thread allowed to submit).
set -euo pipefail
cd "$(dirname "$0")/.."
lat=${1:-4}; bw=${2:-1G}; syncpct=${3:-10}
scripts/setup.sh
cargo build --release --locked -q -p ferry -p fake-vddk
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib/lib64"
cp target/release/libvixDiskLib.so "$work/lib/lib64/libvixDiskLib.so.8"
nbdkit -U - pattern size=1G --run "nbdcopy \"\$uri\" $work/disk.img"
echo secret > "$work/pw"
tp=AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD
bw_bytes=$(python3 -c "s='$bw'; m={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
printf '%-10s %10s %14s %14s %8s\n' buf-count MiB/s bound bound+xfer ratio
for c in 1 4 8 16; do
  best=0
  for _ in 1 2 3; do
    v=$(FAKE_VDDK_BACKING="$work/disk.img" FAKE_VDDK_LATENCY_MS=$lat FAKE_VDDK_BANDWIDTH=$bw \
        FAKE_VDDK_SYNC_COMPLETE_PERCENT=$syncpct FERRY_LOG=error \
        target/release/ferry copy "vddk://u@esx/?vm=vm-1&file=[ds] vm.vmdk&thumbprint=$tp" null: \
        --vddk-libdir "$work/lib" --password-file "$work/pw" --buf-size-in-64k 16 --buf-count $c --json \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["bytes_read"]/d["seconds"]/2**20)')
    best=$(python3 -c "print(max($best, $v))")
  done
  python3 - "$c" "$best" "$lat" "$bw_bytes" <<'PY'
import sys
c, got, lat, bw = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]) / 1000, float(sys.argv[4])
size = 1 << 20
cap = bw / 2**20
bound = min(c * size / lat / 2**20, cap)                     # count × size ÷ latency, capped
bound_x = min(c * size / (lat + size / bw) / 2**20, cap)     # with each request's transfer time
print(f"{c:<10} {got:10.0f} {bound:14.0f} {bound_x:14.0f} {got / bound:8.2f}")
PY
done
rate_bits=$((bw_bytes * 8))
nbdkit -U - --filter=delay --filter=rate file "$work/disk.img" rdelay=${lat}ms rate=$rate_bits --run '
  s=$(date +%s.%N); nbdcopy -C 1 -R 1 --request-size=1048576 "$uri" null:; e=$(date +%s.%N)
  python3 -c "print(f\"nbdcopy, 1 request in flight (CDI shape): {1024/($e-$s):.0f} MiB/s\")"'
