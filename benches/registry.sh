#!/usr/bin/env bash
# A containerDisk from a registry, side by side: a qcow2 (half real files' bytes, half
# zeroes; uncompressed clusters) as /disk/disk.qcow2 (uid/gid 107, mode 0440) in an OCI
# image pushed to Debian's docker-registry (distribution 2.8) on loopback, plain HTTP,
# in two variants of the layer:
#   plain: an uncompressed tar (Ferry reads the qcow2 in place with ranged GETs),
#   gzip:  gzip -6 (how most containerDisks are pushed; Ferry stages it to --scratch).
# Copied into a new file and (as root) into a loop device (direct I/O to its backing
# file) by
#   - ferry copy docker://… DST --insecure-registry (gzip: --scratch DIR),
#   - ferry import with CDI's registry environment (IMPORTER_SOURCE=registry),
#   - the staged path, CDI's registry import shape: skopeo copy docker://… dir:SCRATCH,
#     the layer blob's disk/disk.qcow2 extracted next to it (tar -x; zcat | tar -x),
#     then qemu-img convert -t writeback -O raw disk.qcow2 DST and sync,
# each from a clean start (target deleted or the device left as it is, sync, page cache
# dropped as root), every target checked with cmp against qemu-img's conversion.
# Reported per tool: median wall and CPU seconds (user+sys of all its processes, not
# the registry's), peak resident memory of its largest process, peak scratch bytes
# (allocated bytes of the scratch directory, sampled every 0.1 s), Ferry's time over
# the tool's, and apart the registry's own CPU seconds meanwhile (median).
#   benches/registry.sh [SIZE_MIB] [RUNS]      # default 2048 MiB, 3 runs
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
size_mib=${1:-2048}; runs=${2:-3}
scripts/setup.sh
cargo build --release --locked -q -p ferry
ferry=$PWD/target/release/ferry
work=$(mktemp -d /var/tmp/ferry-registry.XXXXXX)
loopdev=""; regpid=""; sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  [ -n "$regpid" ] && kill "$regpid" 2>/dev/null && wait "$regpid" 2>/dev/null || true
  [ -n "$loopdev" ] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/storage" "$work/tmp" "$work/scratch" "$work/data"

# The disk, its qcow2 and the reference.
make_disk "$work/disk.raw" "$size_mib" $((size_mib / 2))
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
qemu-img convert -O raw "$work/disk.qcow2" "$work/ref.raw"
rm "$work/disk.raw"
ref_bytes=$(stat -c %s "$work/ref.raw")

# Two OCI layouts (oci-plain, oci-gzip), one layer each: disk/ and disk/disk.qcow2.
python3 - "$work" <<'PY'
import gzip, hashlib, json, os, shutil, subprocess, sys, tarfile
work = sys.argv[1]
MTIME = 1_700_000_000

class Hashing:
    def __init__(self, f): self.f, self.h, self.n = f, hashlib.sha256(), 0
    def write(self, b): self.h.update(b); self.n += len(b); return self.f.write(b)
    def flush(self): self.f.flush()

def entry(name, kind, mode, size=0):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.size, t.mtime = kind, mode, size, MTIME
    t.uid = t.gid = 107
    t.uname = t.gname = ""
    return t

qcow2 = os.path.join(work, "disk.qcow2")
tar_path = os.path.join(work, "layer.tar")
with open(tar_path, "wb") as raw:
    h = Hashing(raw)
    with tarfile.open(fileobj=h, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as t:
        t.addfile(entry("disk/", tarfile.DIRTYPE, 0o555))
        with open(qcow2, "rb") as f:
            t.addfile(entry("disk/disk.qcow2", tarfile.REGTYPE, 0o440, os.path.getsize(qcow2)), f)
diff_id = "sha256:" + h.h.hexdigest()
tar_size = os.path.getsize(tar_path)

gz_path = tar_path + ".gz"
with open(gz_path, "wb") as out:
    p = subprocess.Popen(["gzip", "-6", "-n", "-c", tar_path], stdout=subprocess.PIPE)
    g = Hashing(out)
    while chunk := p.stdout.read(1 << 20):
        g.write(chunk)
    assert p.wait() == 0
gz_digest = "sha256:" + g.h.hexdigest()

def blob(blobs, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)

for variant, path, digest, size, mt in [
    ("plain", tar_path, diff_id, tar_size, "application/vnd.oci.image.layer.v1.tar"),
    ("gzip", gz_path, gz_digest, os.path.getsize(gz_path), "application/vnd.oci.image.layer.v1.tar+gzip"),
]:
    d = os.path.join(work, "oci-" + variant)
    blobs = os.path.join(d, "blobs", "sha256")
    os.makedirs(blobs)
    os.rename(path, os.path.join(blobs, digest.split(":")[1]))
    config = {
        "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "COPY disk.qcow2 /disk/"}],
    }
    cd, cs = blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": mt, "digest": digest, "size": size}],
    }
    md, ms = blob(blobs, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": manifest["mediaType"], "digest": md, "size": ms,
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(work, variant + ".layer"), "w") as f:
        f.write(f"{digest} {size}\n")
PY

# The registry: filesystem storage in the work dir, loopback, plain HTTP.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/config.yml" <<CONF
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
  secret: ferry-bench-http-secret
health:
  storagedriver:
    enabled: false
CONF
env $(env | sed -n 's/^\(REGISTRY_[^=]*\)=.*/-u \1/p') docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$work/registry.log"; exit 1; }
: > "$work/registries.conf"
export REGISTRY_AUTH_FILE=$work/auth.json CONTAINERS_REGISTRIES_CONF=$work/registries.conf
for v in plain gzip; do
  skopeo --insecure-policy --tmpdir "$work/tmp" copy --quiet --preserve-digests \
    "oci:$work/oci-$v:latest" "docker://127.0.0.1:$port/disks/bench:$v" --dest-tls-verify=false
  # The registry stored the layer as built (no recompression).
  read -r digest size < "$work/$v.layer"
  [ "$(stat -c %s "$work/storage/docker/registry/v2/blobs/sha256/${digest:7:2}/${digest:7}/data")" = "$size" ]
done
rm -rf "$work/oci-plain" "$work/oci-gzip"
echo "disk: ${size_mib} MiB; qcow2 $(stat -c %s "$work/disk.qcow2") bytes; layers: plain $(cut -d' ' -f2 "$work/plain.layer") bytes, gzip -6 $(cut -d' ' -f2 "$work/gzip.layer") bytes; ferry's pool: 32 × 1 MiB (the default)"

# scratch_peak DIR OUT: the largest allocated size of what DIR holds (the directory's
# own block not counted), sampled every 0.1 s, in OUT.
scratch_peak() {
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

# The registry's CPU time so far, in clock ticks.
reg_ticks() { awk '{print $14 + $15}' "/proc/$regpid/stat"; }
hz=$(getconf CLK_TCK)

# measure OUT CMD...: wall, CPU, peak RSS (GNU time), peak scratch of CMD and the
# registry's CPU seconds meanwhile, appended to OUT. The scratch directory is emptied first and after.
measure() {
  local out=$1; shift
  rm -rf "$work/scratch"; mkdir "$work/scratch"; drop
  scratch_peak "$work/scratch" "$work/peak" & sampler_pid=$!
  local r0 r1; r0=$(reg_ticks)
  /usr/bin/time -o "$work/time" -f "%e %U %S %M" "$@" >/dev/null 2>"$work/err" ||
    { cat "$work/err"; exit 1; }
  r1=$(reg_ticks)
  kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""
  echo "$(cat "$work/time") $(cat "$work/peak") $(python3 -c "print(($r1 - $r0) / $hz)")" >> "$out"
  rm -rf "$work/scratch"; mkdir "$work/scratch"
}

# The staged path: the image to a dir: in scratch, the disk file out of the layer blob
# beside it, qemu-img's conversion from there (peak scratch = blob + extracted file).
staged() { # VARIANT DST
  local variant=$1 dst=$2 digest size
  read -r digest size < "$work/$variant.layer"
  TMPDIR=$work/scratch skopeo --insecure-policy --tmpdir "$work/scratch" copy --quiet \
    --src-tls-verify=false "docker://127.0.0.1:$port/disks/bench:$variant" "dir:$work/scratch/image"
  mkdir "$work/scratch/x"
  if [ "$variant" = gzip ]; then
    zcat "$work/scratch/image/${digest:7}" | tar -x -C "$work/scratch/x" disk/disk.qcow2
  else
    tar -x -f "$work/scratch/image/${digest:7}" -C "$work/scratch/x" disk/disk.qcow2
  fi
  qemu-img convert -t writeback -O raw "$work/scratch/x/disk/disk.qcow2" "$dst"
  sync "$dst"
}

# ferry import with CDI's registry environment (a cleared environment but PATH).
import_pod() { # VARIANT KIND DST
  local variant=$1 kind=$2 dst=$3 blockdev=$work/no-block-device mport
  [ "$kind" = file ] || blockdev=$dst
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env -i PATH="$PATH" IMPORTER_SOURCE=registry \
    IMPORTER_ENDPOINT="docker://127.0.0.1:$port/disks/bench:$variant" \
    IMPORTER_CONTENTTYPE=kubevirt OWNER_UID=bench PREALLOCATION=false INSECURE_TLS=true \
    IMPORTER_PULL_METHOD=pod IMPORTER_REGISTRY_IMAGE_ARCHITECTURE= \
    FERRY_DATA_DIR="$work/data" FERRY_BLOCK_DEVICE="$blockdev" FERRY_SCRATCH_DIR="$work/scratch" \
    FERRY_METRICS_ADDR="127.0.0.1:$mport" TERMINATION_LOG="$work/termination-log" \
    "$ferry" import -v=1
}
export -f staged import_pod
export work port ferry

summ() { # FILE → median wall, median cpu, max rss MiB, max scratch bytes, median registry cpu
  python3 - "$1" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
wall = statistics.median(r[0] for r in rows)
cpu = statistics.median(r[1] + r[2] for r in rows)
rss = max(r[3] for r in rows) / 1024
scratch = max(r[4] for r in rows)
reg = statistics.median(r[5] for r in rows)
print(f"{wall:.2f} {cpu:.2f} {rss:.0f} {scratch:.0f} {reg:.2f}")
PY
}

row() { printf '%-12s %-6s %-44s %8s %8s %8s %13s %8s %9s\n' "$@"; }

check() { cmp -n "$ref_bytes" "$work/ref.raw" "$1"; }

run_target() { # KIND DST
  local kind=$1 dst=$2 v t reset
  for v in plain gzip; do
    for t in ferry import staged; do : > "$work/m.$v.$t"; done
    if [ "$v" = gzip ]; then scratch=(--scratch "$work/scratch"); else scratch=(); fi
    for _ in $(seq "$runs"); do
      [ "$kind" = file ] && rm -f "$dst"
      measure "$work/m.$v.ferry" "$ferry" copy "docker://127.0.0.1:$port/disks/bench:$v" "$dst" \
        --insecure-registry --no-progress "${scratch[@]}"
      check "$dst"
      [ "$kind" = file ] && rm -f "$dst"
      rm -f "$work/data/disk.img"
      measure "$work/m.$v.import" bash -c "import_pod $v '$kind' '$dst'"
      if [ "$kind" = file ]; then check "$work/data/disk.img"; rm -f "$work/data/disk.img"; else check "$dst"; fi
      [ "$kind" = file ] && rm -f "$dst"
      measure "$work/m.$v.staged" bash -c "staged $v '$dst'"
      check "$dst"
    done
    read -r fw fc fm fs fr <<<"$(summ "$work/m.$v.ferry")"
    read -r iw ic im is ir <<<"$(summ "$work/m.$v.import")"
    read -r sw sc sm ss sr <<<"$(summ "$work/m.$v.staged")"
    local how="in place"; [ "$v" = gzip ] && how="--scratch"
    row "$kind" "$v" "ferry copy ($how)" "$fw" "$fc" "$fm" "$fs" 1.00 "$fr"
    row "$kind" "$v" "ferry import (IMPORTER_SOURCE=registry)" "$iw" "$ic" "$im" "$is" \
      "$(python3 -c "print(f'{$fw / $iw:.2f}')")" "$ir"
    row "$kind" "$v" "staged: skopeo dir: + tar -x + qemu-img" "$sw" "$sc" "$sm" "$ss" \
      "$(python3 -c "print(f'{$fw / $sw:.2f}')")" "$sr"
  done
}

row target layer tool wall_s cpu_s rss_MiB scratch_B "ferry/x" reg_cpu_s
run_target file "$work/t.img"
if [ "$(id -u)" = 0 ] && losetup -f >/dev/null 2>&1; then
  truncate -s "${size_mib}M" "$work/loop.img"
  # Direct I/O to the backing file: a block device without a second page cache.
  loopdev=$(losetup --direct-io=on -f --show "$work/loop.img")
  run_target "loop device" "$loopdev"
else
  echo "loop device: skipped (needs root and a free loop device)"
fi
