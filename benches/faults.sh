# Shared by the fault campaigns kill9.sh and powercut.sh (sourced, not run). They set
# $work (a temporary directory) first.

ms_now() { date +%s%3N; }
json_num() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { python3 -c "import sys; print(int(sys.argv[1]) / max(int(sys.argv[2]), 1))" "$1" "$2"; }
# The watermark a journal records (no journal yet — killed before it was made — is
# nothing, which callers read as 0, not a failure).
watermark() { { sed -n 's/^watermark //p' "$1" 2>/dev/null || true; } | head -1; }

# random_disk FILE SIZE_MIB SEED: a sparse-random disk (about half data, in 1 MiB runs),
# made by nbdkit and copied out by nbdcopy. It is then served by qemu-nbd (serve):
# nbdkit 1.32 aborts (an assertion in raw_send_socket) when a client is killed
# mid-reply, qemu-nbd does not.
random_disk() {
  nbdkit -U "$work/gen.sock" -P "$work/gen.pid" sparse-random "size=${2}M" \
    percent=50 runlength=1048576 "seed=$3"
  for _ in $(seq 100); do [ -s "$work/gen.pid" ] && [ -S "$work/gen.sock" ] && break; sleep 0.02; done
  nbdcopy "nbd+unix:///?socket=$work/gen.sock" "$1"
  kill "$(cat "$work/gen.pid")"; rm -f "$work/gen.pid" "$work/gen.sock"
}

serve() { # serve FILE: qemu-nbd on $work/nbd.sock, read-only
  qemu-nbd -t --shared=16 -r -f raw -k "$work/nbd.sock" --pid-file "$work/nbd.pid" "$1" 2>/dev/null &
  for _ in $(seq 100); do [ -s "$work/nbd.pid" ] && [ -S "$work/nbd.sock" ] && break; sleep 0.02; done
}
unserve() {
  kill "$(cat "$work/nbd.pid")" 2>/dev/null || true
  while kill -0 "$(cat "$work/nbd.pid" 2>/dev/null)" 2>/dev/null; do sleep 0.02; done
  rm -f "$work/nbd.pid" "$work/nbd.sock"
}
