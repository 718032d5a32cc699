#!/usr/bin/env bash
# The main job on a built-in example: serve a 2 GiB, 10%-allocated disk over NBD with
# nbdkit (a stand-in for a vSphere disk), copy it with `ferry copy`, check the copy
# byte for byte with qemu-img, then run `ferry bench` on the built-in synthetic disk.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked -p ferry
ferry=target/release/ferry

work=$(mktemp -d)
cleanup() {
  [ -f "$work/nbdkit.pid" ] && kill "$(cat "$work/nbdkit.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

nbdkit --unix "$work/disk.sock" --pidfile "$work/nbdkit.pid" sparse-random size=2G percent=10 seed=42
for _ in $(seq 100); do [ -S "$work/disk.sock" ] && break; sleep 0.1; done
uri="nbd+unix:///?socket=$work/disk.sock"

echo "== ferry copy $uri $work/disk.img"
"$ferry" copy "$uri" "$work/disk.img" --no-progress
echo "== checking the copy against the source with qemu-img compare"
qemu-img compare -s -f raw -F raw "$work/disk.img" "$uri" && echo "identical"
echo "== allocated on disk: $(du -h "$work/disk.img" | cut -f1) of $(du -h --apparent-size "$work/disk.img" | cut -f1)"

echo "== ferry bench (built-in synthetic disk, 1 GiB, 2 runs)"
"$ferry" bench --size-mib 1024 --runs 2 --dir "$work"
