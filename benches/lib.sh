# Shared by the side-by-side scripts in benches/ (sourced, not run).

# A clean start: dirty pages written back and, as root, the page cache dropped.
drop() { sync; if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }

# The seconds a command takes from a clean start, with $work/t.img deleted first.
time_of() {
  rm -f "$work/t.img"; drop
  local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

# make_disk PATH SIZE_MIB DATA_MIB: a sparse disk with DATA_MIB of real files' bytes
# (compressible, as a filesystem's) in 4 runs spread across it, zeroes elsewhere.
make_disk() {
  local path=$1 size_mib=$2 data_mib=$3 chunk i
  truncate -s "${size_mib}M" "$path"
  chunk=$((data_mib / 4))
  # (head closes the pipe early: the writers' SIGPIPE is expected.)
  { find /usr/lib /usr/share -type f -size +64k 2>/dev/null | head -8000 | xargs cat 2>/dev/null |
    head -c "$((data_mib << 20))" > "$path.data"; } || true
  for i in 0 1 2 3; do
    dd if="$path.data" of="$path" bs=1M skip=$((i * chunk)) seek=$((i * size_mib / 4)) count=$chunk conv=notrunc status=none
  done
  rm "$path.data"
}

# The CPU benches' set-up: peers installed, ferry built ($ferry), a scratch $work removed
# on exit, and nbdkit's `pattern` disk of SIZE on a Unix socket there ($src, its URI).
pattern_source() {
  scripts/setup.sh
  cargo build --release --locked -q -p ferry
  ferry=$PWD/target/release/ferry
  work=$(mktemp -d /var/tmp/ferry-cpu.XXXXXX)
  trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
  nbdkit -U "$work/sock" -P "$work/pid" pattern "size=$1"
  for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.05; done
  src="nbd+unix:///?socket=$work/sock"
}

# "WALL CPU" (seconds; CPU = user + system of the command and its children) of a
# command from a clean start, with $work/t.img deleted first.
cpu_of() {
  rm -f "$work/t.img"; drop
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t0 = time.monotonic()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
t1 = time.monotonic()
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{t1 - t0:.3f} {r.ru_utime + r.ru_stime:.3f}")
PY
}
