#!/usr/bin/env bash
# A disk uploaded over HTTPS on loopback, side by side: a qcow2 (half real files' bytes,
# half zeroes; uncompressed clusters) and its raw image, sent with `curl -T` (and with
# `ferry upload`) to
#   - ferry upload-server (CDI's upload server contract; one upload, then it exits):
#     a qcow2 staged to --scratch and converted from there, raw straight to the target,
#   - CDI's upload path shape: nginx (TLS, the dav module's PUT: the body written to a
#     file, one write, no processing) storing the qcow2 in a scratch directory, then
#     qemu-img convert -t writeback -O raw into the target and sync; a raw image PUT
#     straight into the target file (the body's temporary file renamed onto it), then
#     sync,
# into a new file, each from a clean start (target deleted, sync, page cache dropped as
# root), every target checked with cmp against qemu-img's conversion.
# Reported per path: median wall seconds (from the client's start to the target being
# durable: the server's exit for Ferry, the sync after qemu-img for CDI's path), CPU
# seconds (user+sys of the server and every client process: ferry upload-server + curl;
# nginx's workers + curl + qemu-img), peak resident memory of the largest process, and
# peak scratch bytes (allocated bytes in the scratch directory, sampled every 0.1 s).
#   benches/upload.sh [SIZE_MIB] [RUNS]      # default 2048 MiB, 3 runs
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
size_mib=${1:-2048}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-upload.XXXXXX)
sampler_pid=""; server_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  # (the server runs under GNU time: its child first)
  [ -n "$server_pid" ] && kill $(pgrep -P "$server_pid") "$server_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/scratch/.body" "$work/body" "$work/www"

# The disk: the qcow2, its raw image (the reference and the raw upload).
make_disk "$work/disk.raw" "$size_mib" $((size_mib / 2))
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
qemu-img convert -O raw "$work/disk.qcow2" "$work/ref.raw"
rm "$work/disk.raw"
ref_bytes=$(stat -c %s "$work/ref.raw")

# A CA and a server certificate for 127.0.0.1 (P-256, as CDI's own are ECDSA).
(
  cd "$work"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=ferry bench CA" 2>/dev/null
  openssl req "${ec[@]}" -keyout key.pem -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
    -days 2 -extfile leaf.ext 2>/dev/null
)
token=bench-t0ken
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { local i; for i in $(seq 300); do (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.02; done; return 1; }

# CDI's receiver: nginx, one worker, TLS, PUT (dav) stores the body as a file: under
# /scratch/ in the scratch directory (its temporary file there too), elsewhere in the
# work dir (the target's filesystem).
nport=$(free_port)
cat > "$work/nginx.conf" <<CONF
user root; daemon on; worker_processes 1; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 64; }
http { access_log off; client_max_body_size 0; client_body_buffer_size 1m;
  client_body_temp_path $work/body; proxy_temp_path $work/p; fastcgi_temp_path $work/f;
  uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$nport ssl; ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem; root $work/www; dav_methods PUT;
    location /scratch/ { root $work; client_body_temp_path $work/scratch/.body; } } }
CONF
nginx -c "$work/nginx.conf" -p "$work"
wait_port "$nport"
nginx_pids() { echo "$(cat "$work/nginx.pid") $(pgrep -P "$(cat "$work/nginx.pid")")"; }
nginx_ticks() { local p t=0; for p in $(nginx_pids); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
nginx_hwm_kib() { local p m=0 h; for p in $(nginx_pids); do h=$(awk '/VmHWM/ {print $2}' "/proc/$p/status"); [ "$h" -gt "$m" ] && m=$h; done; echo "$m"; }
hz=$(getconf CLK_TCK)
echo "disk: ${size_mib} MiB; qcow2 $(stat -c %s "$work/disk.qcow2") bytes; raw $ref_bytes bytes ($(du -B1 "$work/ref.raw" | cut -f1) allocated); receiver for CDI's path: nginx $(nginx -v 2>&1 | sed 's/.*\///') (dav PUT, TLS)"

scratch_peak() { # DIR OUT: the largest allocated size of DIR's files, sampled every 0.1 s
  local dir=$1 out=$2 max=0 b base
  base=$(du -s -B1 "$dir" | cut -f1)
  echo 0 > "$out"
  while :; do
    b=$(du -s -B1 "$dir" 2>/dev/null | cut -f1) || true
    b=$(( ${b:-0} - base ))
    if [ "$b" -gt "$max" ]; then max=$b; echo "$max" > "$out"; fi
    sleep 0.1
  done
}
clean() { rm -f "$work/t.img" "$work/www/t.img"; find "$work/scratch" -type f -delete; drop; }
sampler_start() { scratch_peak "$work/scratch" "$work/peak" & sampler_pid=$!; }
sampler_stop() { kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }
gnu_time() { /usr/bin/time -o "$1" -f "%U %S %M" "${@:2}"; }

# ferry_run OUT FILE CLIENT: ferry upload-server into $work/t.img, FILE sent by CLIENT
# (curl or ferry); "wall user sys rss scratch" appended to OUT.
ferry_run() {
  local out=$1 file=$2 client=$3 port t0 t1 su ss sm cu cs cm
  clean; port=$(free_port)
  gnu_time "$work/time.s" "$ferry" upload-server --listen "127.0.0.1:$port" \
    --cert "$work/cert.pem" --key "$work/key.pem" --token "$token" --scratch "$work/scratch" \
    --termination-log "$work/termination-log" "$work/t.img" >/dev/null 2>"$work/err.s" &
  server_pid=$!
  wait_port "$port" || { cat "$work/err.s"; exit 1; }
  sampler_start
  t0=$(date +%s.%N)
  if [ "$client" = curl ]; then
    gnu_time "$work/time.c" curl -sSf -o /dev/null -T "$file" "https://127.0.0.1:$port/upload/$token" \
      --cacert "$work/ca.pem" 2>"$work/err.c" || { cat "$work/err.c" "$work/err.s"; exit 1; }
  else
    gnu_time "$work/time.c" "$ferry" upload "$file" "https://127.0.0.1:$port/upload/$token" \
      --ca "$work/ca.pem" --no-progress >/dev/null 2>"$work/err.c" || { cat "$work/err.c" "$work/err.s"; exit 1; }
  fi
  wait "$server_pid" || { cat "$work/err.s"; exit 1; }
  t1=$(date +%s.%N); server_pid=""
  sampler_stop
  read -r su ss sm < "$work/time.s"; read -r cu cs cm < "$work/time.c"
  echo "$(secs "$t0" "$t1") $(python3 -c "print(f'{$su + $ss + $cu + $cs:.2f}')") $(( sm > cm ? sm : cm )) $(cat "$work/peak")" >> "$out"
  cmp -n "$ref_bytes" "$work/ref.raw" "$work/t.img"
}

# cdi_run OUT qcow2|raw: the body stored by nginx, then (qcow2) converted from scratch.
cdi_run() {
  local out=$1 kind=$2 t0 t1 n0 n1 u s m tgt=$work/www/t.img
  clean
  sampler_start; n0=$(nginx_ticks)
  t0=$(date +%s.%N)
  if [ "$kind" = qcow2 ]; then
    gnu_time "$work/time.c" bash -c "curl -sSf -o /dev/null -T '$work/disk.qcow2' \
      https://127.0.0.1:$nport/scratch/disk.qcow2 --cacert '$work/ca.pem' &&
      qemu-img convert -t writeback -O raw '$work/scratch/disk.qcow2' '$tgt' && sync '$tgt'" \
      2>"$work/err.c" || { cat "$work/err.c" "$work/error.log"; exit 1; }
  else
    gnu_time "$work/time.c" bash -c "curl -sSf -o /dev/null -T '$work/ref.raw' \
      https://127.0.0.1:$nport/t.img --cacert '$work/ca.pem' && sync '$tgt'" \
      2>"$work/err.c" || { cat "$work/err.c" "$work/error.log"; exit 1; }
  fi
  t1=$(date +%s.%N); n1=$(nginx_ticks)
  sampler_stop
  read -r u s m < "$work/time.c"
  m=$(( m > $(nginx_hwm_kib) ? m : $(nginx_hwm_kib) ))
  echo "$(secs "$t0" "$t1") $(python3 -c "print(f'{$u + $s + ($n1 - $n0) / $hz:.2f}')") $m $(cat "$work/peak")" >> "$out"
  cmp -n "$ref_bytes" "$work/ref.raw" "$tgt"
}

summ() { # FILE of "wall cpu rss_kib scratch" → median wall, median cpu, max rss MiB, max scratch
  python3 - "$1" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
print(f"{statistics.median(r[0] for r in rows):.2f} {statistics.median(r[1] for r in rows):.2f} "
      f"{max(r[2] for r in rows) / 1024:.0f} {max(r[3] for r in rows):.0f}")
PY
}
row() { printf '%-6s %-56s %8s %8s %8s %13s %8s\n' "$@"; }

for k in qcow2 raw; do for t in curl ferry cdi; do : > "$work/m.$k.$t"; done; done
for _ in $(seq "$runs"); do
  for k in qcow2 raw; do
    if [ $k = qcow2 ]; then f=$work/disk.qcow2; else f=$work/ref.raw; fi
    ferry_run "$work/m.$k.curl" "$f" curl
    ferry_run "$work/m.$k.ferry" "$f" ferry
    cdi_run "$work/m.$k.cdi" "$k"
  done
done

row image path wall_s cpu_s rss_MiB scratch_B "ferry/x"
for k in qcow2 raw; do
  read -r fw fc fm fs <<<"$(summ "$work/m.$k.curl")"
  read -r uw uc um us <<<"$(summ "$work/m.$k.ferry")"
  read -r cw cc cm cs <<<"$(summ "$work/m.$k.cdi")"
  if [ $k = qcow2 ]; then cdi="CDI: nginx PUT to scratch + qemu-img convert"; else cdi="CDI: nginx PUT into the target"; fi
  row "$k" "ferry upload-server ← curl -T" "$fw" "$fc" "$fm" "$fs" 1.00
  row "$k" "ferry upload-server ← ferry upload" "$uw" "$uc" "$um" "$us" "$(python3 -c "print(f'{$fw / $uw:.2f}')")"
  row "$k" "$cdi ← curl -T" "$cw" "$cc" "$cm" "$cs" "$(python3 -c "print(f'{$fw / $cw:.2f}')")"
done
