#!/usr/bin/env bash
# A qcow2 image over HTTP, side by side: a zstd-compressed qcow2 (half real files'
# bytes, half zeroes) served by nginx on loopback, copied into a new file and into a
# loop device by
#   - ferry copy http://…/disk.qcow2 DST (the image's map first, then ranged GETs in
#     parallel; no scratch),
#   - CDI's path: download to a scratch file (curl), then qemu-img convert -O raw,
#   - qemu-img convert reading through nbdkit's curl plugin (CDI's filters: readahead,
#     retry),
# each from a clean start (target deleted or the device left as it is, sync, page cache
# dropped as root), every target checked with cmp against qemu-img's conversion.
# Reported per tool: wall seconds, CPU seconds (user+sys of every process of the tool,
# not nginx), peak resident memory (the largest process), peak scratch bytes.
#   benches/http.sh [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
size_mib=${1:-4096}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-http.XXXXXX)
loopdev=""
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www"
make_disk "$work/disk.raw" "$size_mib" $((size_mib / 2))
qemu-img convert -c -O qcow2 -o compression_type=zstd "$work/disk.raw" "$work/www/disk.qcow2"
qemu-img convert -O raw "$work/www/disk.qcow2" "$work/ref.raw"
rm "$work/disk.raw"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx.conf" <<CONF
user root; daemon on; worker_processes 2; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; client_body_temp_path $work/b; proxy_temp_path $work/p;
  fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
nginx -c "$work/nginx.conf" -p "$work"
url=http://127.0.0.1:$port/disk.qcow2
img_bytes=$(stat -c %s "$work/www/disk.qcow2")
echo "image: $img_bytes bytes of qcow2 (zstd) for a $((size_mib))-MiB disk; ferry's pool: 32 × 1 MiB (the default)"

# measure OUT CMD...: wall, CPU and peak RSS of CMD (GNU time), appended to OUT.
measure() {
  local out=$1; shift
  /usr/bin/time -o "$work/time" -f "%e %U %S %M" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
  cat "$work/time" >> "$out"
}

# The CDI path: scratch download, then conversion (peak scratch = the image).
cdi_path() {
  curl -sf -o "$work/scratch" "$url"
  qemu-img convert -t writeback -O raw "$work/scratch" "$1"
  sync "$1"
  rm -f "$work/scratch"
}
nbdkit_path() {
  rm -f "$work/nbd.sock"
  nbdkit -r -U "$work/nbd.sock" -P "$work/nbdkit.pid" --filter=readahead --filter=retry curl "$url"
  while [ ! -S "$work/nbd.sock" ]; do sleep 0.05; done
  qemu-img convert -f qcow2 -O raw "nbd+unix:///?socket=$work/nbd.sock" "$1"
  sync "$1"
  kill "$(cat "$work/nbdkit.pid")"
}
export -f cdi_path nbdkit_path
export work url

summ() { # FILE → median wall, median cpu, max rss MiB
  python3 - "$1" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
wall = statistics.median(r[0] for r in rows)
cpu = statistics.median(r[1] + r[2] for r in rows)
rss = max(r[3] for r in rows) / 1024
print(f"{wall:.2f} {cpu:.2f} {rss:.0f}")
PY
}

run_target() { # KIND DST
  local kind=$1 dst=$2 t
  for t in ferry cdi nbdkit; do : > "$work/m.$t"; done
  for _ in $(seq "$runs"); do
    [ "$kind" = file ] && rm -f "$dst"; drop
    measure "$work/m.ferry" "$ferry" copy "$url" "$dst" --no-progress
    cmp -n "$(stat -c %s "$work/ref.raw")" "$work/ref.raw" "$dst"
    [ "$kind" = file ] && rm -f "$dst"; drop
    measure "$work/m.cdi" bash -c "cdi_path '$dst'"
    [ "$kind" = file ] && rm -f "$dst"; drop
    measure "$work/m.nbdkit" bash -c "nbdkit_path '$dst'"
    cmp -n "$(stat -c %s "$work/ref.raw")" "$work/ref.raw" "$dst"
  done
  read -r fw fc fm <<<"$(summ "$work/m.ferry")"
  read -r cw cc cm <<<"$(summ "$work/m.cdi")"
  read -r nw nc nm <<<"$(summ "$work/m.nbdkit")"
  printf '%-12s %-40s %8s %8s %8s %12s %8s\n' "$kind" "ferry copy (ranged GETs)" "$fw" "$fc" "$fm" 0 1.00
  printf '%-12s %-40s %8s %8s %8s %12s %8s\n' "$kind" "CDI: curl to scratch + qemu-img convert" "$cw" "$cc" "$cm" "$img_bytes" "$(python3 -c "print(f'{$fw / $cw:.2f}')")"
  printf '%-12s %-40s %8s %8s %8s %12s %8s\n' "$kind" "qemu-img convert via nbdkit curl" "$nw" "$nc" "$nm" 0 "$(python3 -c "print(f'{$fw / $nw:.2f}')")"
}

printf '%-12s %-40s %8s %8s %8s %12s %8s\n' target tool wall_s cpu_s rss_MiB scratch_B "ferry/x"
run_target file "$work/t.img"
if [ "$(id -u)" = 0 ] && losetup -f >/dev/null 2>&1; then
  truncate -s "${size_mib}M" "$work/loop.img"
  # Direct I/O to the backing file: a block device without a second page cache.
  loopdev=$(losetup --direct-io=on -f --show "$work/loop.img")
  run_target "loop device" "$loopdev"
else
  echo "loop device: skipped (needs root and a free loop device)"
fi
